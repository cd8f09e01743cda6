"""Cached greedy decoding: equal to re-running the whole decoder on the growing prefix (no cache)
and to transformers' PyTorch `generate(do_sample=False, num_beams=1)`; with adapters active too."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax.methods import get_method
from adapters_jax.models import init_decode_cache, load_pretrained, make_greedy_generate, plain_apply
from adapters_jax.splicing.splice import add_adapter
from tests.models.t5_reference import TINY_T5, encoder_batch, save, torch_greedy, torch_t5

MAX_NEW = 8
PAD = TINY_T5['pad_token_id']


@pytest.fixture(scope='module', params=['v1.0', 'v1.1'])
def loaded(request, tmp_path_factory):
  # initializer_factor=10 makes greedy paths that do not repeat one token from the start.
  torch_model = torch_t5(request.param, initializer_factor=10.0)
  directory = save(torch_model, tmp_path_factory.mktemp('t5'))
  return torch_model, load_pretrained(str(directory), load_tokenizer=False)


def uncached_greedy(apply, params, ids, mask, max_new_tokens, eos, start=0):
  """Reference: at step t, run the whole decoder (teacher forcing, no cache) on the prefix.

  The prefix sits in a fixed-length buffer padded after position t; the causal mask keeps those
  pads out of position t, so one compiled `decode` serves every step."""
  encoder_hidden = apply(params, ids, mask, method='encode')
  decode = jax.jit(lambda p, d: apply(p, d, encoder_hidden, mask, method='decode'))
  buffer = np.full((ids.shape[0], max_new_tokens), PAD, np.int32)
  buffer[:, 0] = start
  out, done = [], np.zeros(ids.shape[0], bool)
  for t in range(max_new_tokens):
    token = np.asarray(jnp.argmax(decode(params, buffer)[:, t], axis=-1))
    token = np.where(done, PAD, token)
    out.append(token)
    done |= token == eos
    if t + 1 < max_new_tokens:
      buffer[:, t + 1] = token
  return np.stack(out, axis=1)


def _first_new_token(row):
  """A token of `row` first produced at position >= 2 and before the end: decoding with it as
  EOS stops this row early."""
  for t in range(2, len(row) - 1):
    if row[t] not in row[:t]:
      return int(row[t])
  raise AssertionError(f'every token of {row} repeats an earlier one')


def test_cached_greedy_equals_uncached_and_torch(loaded):
  torch_model, pre = loaded
  ids, mask = encoder_batch()
  free_run = torch_greedy(torch_model, ids, mask, MAX_NEW, eos_token_id=None)
  eos = _first_new_token(free_run[0])
  config = pre.config.replace(eos_token_id=eos)
  model = pre.model.clone(config=config)
  ours = np.asarray(make_greedy_generate(plain_apply(model), config)(pre.params, ids, mask,
                                                                     max_new_tokens=MAX_NEW))
  reference = uncached_greedy(plain_apply(model), pre.params, ids, mask, MAX_NEW, eos)
  expected = torch_greedy(torch_model, ids, mask, MAX_NEW, eos_token_id=eos)
  np.testing.assert_array_equal(reference, expected)
  np.testing.assert_array_equal(ours, expected)
  stop = list(ours[0]).index(eos)
  assert stop < MAX_NEW - 1 and (ours[0, stop + 1:] == PAD).all()  # row 0 stopped at EOS


def _step_by_step_logits(apply, config, params, ids, mask, decoder_ids):
  """Logits of `decode_step` fed one token at a time through the cache: `[batch, tgt, vocab]`."""
  encoder_hidden = apply(params, ids, mask, method='encode')
  cache = init_decode_cache(config, ids.shape[0], decoder_ids.shape[1])
  first, cache = apply(params, decoder_ids[:, :1], 0, cache, encoder_hidden, mask,
                       method='decode_step')
  step = jax.jit(lambda p, tok, pos, c: apply(p, tok, pos, c, encoder_hidden, mask,
                                              method='decode_step'))
  logits = [first[:, 0]]
  for t in range(1, decoder_ids.shape[1]):
    out, cache = step(params, decoder_ids[:, t:t + 1], t, cache)
    logits.append(out[:, 0])
  return np.stack(logits, axis=1)


def test_cached_steps_give_the_teacher_forcing_logits(loaded):
  _, pre = loaded
  ids, mask = encoder_batch()
  decoder_ids = np.random.default_rng(2).integers(2, TINY_T5['vocab_size'], (3, 6)).astype(np.int32)
  cached = _step_by_step_logits(plain_apply(pre.model), pre.config, pre.params, ids, mask,
                                decoder_ids)
  full = pre.model.apply({'params': pre.params}, ids, mask, decoder_ids)
  _assert_close_at_scale(cached, np.asarray(full))


def _assert_close_at_scale(actual, expected, relative=1e-5):
  """float32 rounding grows with the logits (up to ~200 with initializer_factor=10): compare the
  largest difference with the largest logit."""
  scale = float(np.abs(expected).max())
  assert float(np.abs(actual - expected).max()) <= relative * scale, (
      np.abs(actual - expected).max(), scale)


def _perturbed(params, name, rng):
  """Every leaf of adapter `name` replaced by U(0.5, 1.5): far from the identity init."""
  flat = jax.tree_util.tree_flatten_with_path(params)
  leaves = []
  for i, (path, leaf) in enumerate(flat[0]):
    keys = [getattr(k, 'key', '') for k in path]
    if 'adapters' in keys and name in keys:
      leaf = jax.random.uniform(jax.random.fold_in(rng, i), leaf.shape, leaf.dtype, 0.5, 1.5)
    leaves.append(leaf)
  return jax.tree_util.tree_unflatten(flat[1], leaves)


@pytest.mark.parametrize('loaded', ['v1.1'], indirect=True)
def test_generate_with_adapters_active(loaded):
  """(IA)3 rescales self- and cross-attention keys/values: the cache must hold the rescaled ones."""
  _, pre = loaded
  ids, mask = encoder_batch()
  decoder_ids = np.zeros((3, 2), np.int32)
  spliced, params = add_adapter(pre.model, pre.params, 'ia3', get_method('ia3'),
                                jax.random.key(0), ids, mask, decoder_ids)
  params = _perturbed(params, 'ia3', jax.random.key(1))
  active = functools.partial(spliced.apply, active='ia3')
  steps = np.random.default_rng(3).integers(2, TINY_T5['vocab_size'], (3, 5)).astype(np.int32)
  cached = _step_by_step_logits(active, pre.config, params, ids, mask, steps)
  full = np.asarray(active(params, ids, mask, steps))
  base = np.asarray(spliced.apply(params, ids, mask, steps))
  _assert_close_at_scale(cached, full)
  assert np.abs(full - base).max() > 1e-1  # the adapter changes the model
  eos = pre.config.vocab_size  # never produced: every row runs to max_new_tokens
  config = pre.config.replace(eos_token_id=eos)
  ours = make_greedy_generate(active, config)(params, ids, mask, max_new_tokens=MAX_NEW)
  reference = uncached_greedy(active, params, ids, mask, MAX_NEW, eos)
  np.testing.assert_array_equal(np.asarray(ours), reference)
