"""Beam search against transformers' PyTorch `generate(num_beams=...)` on the same tiny Llama
(EOS, length penalty and no-repeat n-grams on), and inside an already-jitted step."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from adapters_jax.models import load_pretrained
from adapters_jax.models.beam_search import BeamSearchConfig, beam_search, beam_search_traced
from tests.models import decoder_checkpoints as dc


@pytest.fixture(scope='module')
def llama(tmp_path_factory):
  reference = dc.torch_model('llama')
  directory = dc.save(reference, tmp_path_factory.mktemp('llama'))
  return reference, load_pretrained(str(directory), load_tokenizer=False)


def _torch_beams(reference, ids, config):
  with torch.no_grad():
    out = reference.generate(
        torch.from_numpy(ids).long(), attention_mask=torch.ones(ids.shape, dtype=torch.long),
        num_beams=config.num_beams, max_new_tokens=config.max_new_tokens, do_sample=False,
        length_penalty=config.length_penalty, no_repeat_ngram_size=config.no_repeat_ngram_size,
        early_stopping=False, eos_token_id=list(config.eos_token_ids) or None,
        pad_token_id=config.pad_token_id)
  return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize('length_penalty,ngram', [(1.0, 0), (-2.0, 2)])
def test_beam_search_matches_transformers(llama, length_penalty, ngram):
  # Bugs caught: finished hypotheses scored without the length penalty, the cache not reordered
  # with the beams (later tokens attend to another beam's past), n-grams banned per batch row
  # instead of per beam, or the search stopping at the first finished beam.
  reference, pre = llama
  ids, _ = dc.left_padded([6, 6], 6, 97, seed=3)
  # EOS: a token the best hypothesis without EOS produces, so that hypotheses end early.
  config = BeamSearchConfig(num_beams=3, max_new_tokens=8, length_penalty=length_penalty,
                            no_repeat_ngram_size=ngram, pad_token_id=1)  # HF fills 0 with EOS
  without_eos = _torch_beams(reference, ids, config)
  config = dataclasses.replace(config, eos_token_ids=(int(without_eos[0, 3]),))
  expected = _torch_beams(reference, ids, config)
  out = beam_search(pre.model, pre.params, ids, None, config)
  tokens = np.asarray(out.tokens)
  for row in range(2):
    length = int(out.lengths[row])
    np.testing.assert_array_equal(tokens[row, :length], expected[row, :length])
    assert (expected[row, length:] == config.pad_token_id).all()
  assert (np.asarray(out.lengths) < config.max_new_tokens).any()  # EOS ended a hypothesis


def test_beam_search_runs_inside_a_jitted_step(llama):
  _, pre = llama
  ids, mask = dc.left_padded([6, 4], 6, 97, seed=1)
  config = BeamSearchConfig(num_beams=2, max_new_tokens=5)

  def decode(p, i, m, cache):
    return pre.model.apply({'params': p}, i, m, cache, method='decode', last_only=True)

  traced = jax.jit(lambda p: beam_search_traced(decode, pre.config, p, ids, mask, config))
  np.testing.assert_array_equal(traced(pre.params).tokens,
                                beam_search(pre.model, pre.params, ids, mask, config).tokens)
