"""Prefix tuning on every backbone: the attention with a prefix against float64 references written
here (concatenate, mask, softmax by hand) on BERT's and T5's attention (self with relative bias,
cross without), the whole decoders (Llama with GQA and RoPE, GPT-2) against transformers' PyTorch
models fed the same prefix as `past_key_values`; a zero-length prefix is the base model; padded
rows equal unpadded ones; eject equals the reparameterised form; Stack concatenates; what cannot
take a prefix (Average, Fuse, a host without the hook) is refused with the reason."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from transformers import DynamicCache

from adapters_jax import add_adapter, add_fusion, eject_adapter, get_method
from adapters_jax.models import (
  EncoderConfig,
  T5Config,
  T5ForConditionalGeneration,
  classification_model,
  load_pretrained,
)
from adapters_jax.models.bert import SelfAttention
from adapters_jax.models.t5_layers import Attention
from adapters_jax.splicing.composition import Average, CompositionError, Fuse, Stack
from adapters_jax.splicing.sites import SiteMatchError
from tests.models import decoder_checkpoints as dc
from tests.tiny_model import TinyClassifier, init_tiny, tiny_batch

P = 3
BERT = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                     intermediate_size=64, max_position_embeddings=32)
T5 = T5Config(vocab_size=99, d_model=32, d_kv=6, d_ff=48, num_layers=2, num_decoder_layers=2,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False)


def _flat_prefix(sites, length=P):
  return get_method('prefix_tuning_flat', prefix_length=length, sites=sites)


def params_at(params, path):
  return traverse_util.flatten_dict(params, sep='/')[path]


def _reshape_prefix(params, site, heads, dim, name='a'):
  flat = np.asarray(params_at(params, f'{site}/adapters/{name}/prefixes'), np.float64)
  prefix = flat.reshape(flat.shape[0], 2, heads, dim)
  return prefix[:, 0], prefix[:, 1]


def _softmax_attention(q, k, v, mask, bias=None, scale=1.0):
  """float64: q `[b, q, h, d]`, k/v `[b, k, h, d]`, mask bool `[b, 1|h, q|1, k]`."""
  scores = np.einsum('bqhd,bkhd->bhqk', q, k) * scale
  if bias is not None:
    scores = scores + bias
  scores = np.where(mask, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', probs, v)


def _with_prefix(pk, pv, k, v, mask):
  """Prefix keys/values `[P, h, d]` in front of k/v `[b, s, h, d]`; the mask opened for them."""
  b = k.shape[0]
  k = np.concatenate([np.broadcast_to(pk, (b,) + pk.shape), k], axis=1)
  v = np.concatenate([np.broadcast_to(pv, (b,) + pv.shape), v], axis=1)
  ones = np.ones(mask.shape[:-1] + (pk.shape[0],), bool)
  return k, v, np.concatenate([ones, mask], axis=-1)


def _dense(p, x, name):
  out = x @ np.asarray(p[name]['kernel'], np.float64)
  return out + np.asarray(p[name]['bias'], np.float64) if 'bias' in p[name] else out


def test_bert_attention_with_a_prefix_equals_float64_reference():
  hidden = jax.random.normal(jax.random.key(0), (2, 5, 32))
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)[:, None, None, :]
  model = SelfAttention(BERT)
  params = model.init(jax.random.key(1), hidden, mask, True)['params']
  spliced, params = add_adapter(model, params, 'a', _flat_prefix((('prefix', 'keys_values'),)),
                                jax.random.key(2), hidden, mask, True)
  out = np.asarray(spliced.apply(params, hidden, mask, True, active='a'))
  x, heads, dim = np.asarray(hidden, np.float64), 4, 8
  split = lambda a: a.reshape(2, 5, heads, dim)
  q, k, v = (split(_dense(params, x, n)) for n in ('query', 'key', 'value'))
  pk, pv = _reshape_prefix(params, 'prefix', heads, dim)
  assert np.abs(pk).mean() > 0.1 and np.abs(pv).mean() > 0.1  # random, not zero
  k, v, m = _with_prefix(pk, pv, k, v, np.asarray(mask))
  context = _softmax_attention(q, k, v, m, scale=dim ** -0.5).reshape(2, 5, 32)
  np.testing.assert_allclose(out, _dense(params, context, 'output'), rtol=1e-5, atol=1e-5)
  base = np.asarray(spliced.apply(params, hidden, mask, True))
  assert np.abs(out - base).max() > 1e-2


class _T5AttentionHost(nn.Module):
  """T5's attention alone: queries from `hidden`, keys/values from `memory`."""

  config: T5Config

  @nn.compact
  def __call__(self, hidden, memory, bias, mask):
    attention = Attention(self.config, name='attention')
    key, value = attention.key_value(memory)
    return attention(hidden, key, value, bias, mask, True)


@pytest.mark.parametrize('kind', ['self', 'cross'])
def test_t5_attention_with_a_prefix_equals_float64_reference(kind):
  """The prefix has no relative position: the bias of its columns is 0 (the real keys keep theirs)."""
  hidden = jax.random.normal(jax.random.key(0), (2, 4, 32))
  memory = hidden if kind == 'self' else jax.random.normal(jax.random.key(3), (2, 6, 32))
  k_len = memory.shape[1]
  bias = (jax.random.normal(jax.random.key(4), (1, 4, 4, k_len)) if kind == 'self' else None)
  mask = jnp.ones((2, 1, 1, k_len), bool).at[1, ..., k_len - 2:].set(False)
  model = _T5AttentionHost(T5)
  params = model.init(jax.random.key(1), hidden, memory, bias, mask)['params']
  spliced, params = add_adapter(model, params, 'a',
                                _flat_prefix((('attention/prefix', 'keys_values'),)),
                                jax.random.key(2), hidden, memory, bias, mask)
  out = np.asarray(spliced.apply(params, hidden, memory, bias, mask, active='a'))
  p = params['attention']
  heads, dim = 4, 6
  q = _dense(p, np.asarray(hidden, np.float64), 'query').reshape(2, 4, heads, dim)
  mem = np.asarray(memory, np.float64)
  k = _dense(p, mem, 'key').reshape(2, k_len, heads, dim)
  v = _dense(p, mem, 'value').reshape(2, k_len, heads, dim)
  pk, pv = _reshape_prefix(params, 'attention/prefix', heads, dim)
  k, v, m = _with_prefix(pk, pv, k, v, np.asarray(mask))
  full_bias = None
  if bias is not None:
    full_bias = np.concatenate([np.zeros((1, 4, 4, P)), np.asarray(bias, np.float64)], axis=-1)
  context = _softmax_attention(q, k, v, m, full_bias).reshape(2, 4, heads * dim)  # no 1/sqrt(d)
  np.testing.assert_allclose(out, _dense(p, context, 'output'), rtol=1e-5, atol=1e-5)


def _load_decoder(family, tmp_path):
  torch_model = dc.torch_model(family)
  dc.save(torch_model, tmp_path)
  return torch_model, load_pretrained(str(tmp_path), load_tokenizer=False)


@pytest.mark.parametrize('positions', ['none', 'after_prefix'])
@pytest.mark.parametrize('family', ['llama', 'gpt2'])
def test_decoder_with_a_prefix_equals_torch_fed_the_prefix_as_past_key_values(family, positions,
                                                                              tmp_path):
  """transformers' decoder with the prefix as its cache, the mask opened for the prefix (PEFT's
  form), left-padded rows; positions of the real tokens from 0 (`positions='none'`) or from P
  (`'after_prefix'`, what PEFT's run gives them), for RoPE and learned positions alike."""
  torch_model, pre = _load_decoder(family, tmp_path)
  ids, mask = dc.left_padded([7, 4], 7, pre.config.vocab_size)
  spliced, params = add_adapter(pre.model, pre.params, 'a', get_method('prefix_tuning_flat',
                                                                       prefix_length=P,
                                                                       positions=positions),
                                jax.random.key(1), ids, mask)
  shift = P if positions == 'after_prefix' else 0
  ours = np.asarray(jax.jit(lambda p: spliced.apply(p, ids, mask, active='a'))(params))
  kv_heads, dim = pre.config.num_kv_heads, pre.config.head_dim
  legacy = []
  for i in range(pre.config.num_layers):
    pk, pv = _reshape_prefix(params, f'decoder/layer_{i}/attention/prefix', kv_heads, dim)
    as_cache = lambda a: torch.tensor(np.broadcast_to(a.transpose(1, 0, 2)[None],
                                                      (2, kv_heads, P, dim)).copy(),
                                      dtype=torch.float32)
    legacy.append((as_cache(pk), as_cache(pv)))
  with torch.no_grad():
    reference = torch_model(
        input_ids=torch.from_numpy(ids).long(),
        attention_mask=torch.from_numpy(np.concatenate([np.ones((2, P), np.int32), mask], 1)),
        position_ids=torch.from_numpy(dc.hf_positions(mask) + shift).long(),
        past_key_values=DynamicCache.from_legacy_cache(tuple(legacy))).logits.numpy()
  assert dc.max_diff_at(ours, reference, mask) <= 1e-4
  base = np.asarray(spliced.apply(params, ids, mask))
  assert dc.max_diff_at(ours, base, mask) > 1e-2


def _bert():
  ids, _ = tiny_batch(batch=2, length=7, vocab=60)
  mask = np.ones_like(ids)
  model = classification_model(BERT, num_labels=3)
  return model, jax.jit(model.init)(jax.random.key(0), ids, mask)['params'], ids, mask


def _t5():
  ids = np.random.default_rng(0).integers(2, 99, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  decoder_ids = np.random.default_rng(1).integers(2, 99, (2, 5)).astype(np.int32)
  model = T5ForConditionalGeneration(T5)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask, decoder_ids)['params']
  return model, params, (ids, mask, decoder_ids)


@pytest.mark.parametrize('preset', ['prefix_tuning', 'prefix_tuning_flat'])
def test_zero_length_prefix_is_the_base_model(preset):
  for model, params, args in (_bert()[:2] + (_bert()[2:],), _t5()):
    spliced, grafted = add_adapter(model, params, 'a', get_method(preset, prefix_length=0),
                                   jax.random.key(1), *args)
    out = jax.jit(lambda p, spliced=spliced, args=args: spliced.apply(p, *args, active='a'))
    base = jax.jit(lambda p, model=model, args=args: model.apply({'params': p}, *args))
    np.testing.assert_allclose(out(grafted), base(params), rtol=0, atol=1e-5)


def test_padded_rows_equal_unpadded_rows():
  model, params, ids, _ = _bert()
  spliced, params = add_adapter(model, params, 'a', get_method('prefix_tuning', prefix_length=P,
                                                               bottleneck_size=16),
                                jax.random.key(1), ids, np.ones_like(ids))
  mask = np.ones_like(ids)
  mask[1, 4:] = 0
  run = jax.jit(lambda i, m: spliced.apply(params, i, m, active='a'))
  batch, alone = np.asarray(run(ids, mask)), np.asarray(run(ids[1:, :4], mask[1:, :4]))
  np.testing.assert_allclose(batch[1:], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('switch,missing', [('encoder_prefix', 'encoder/layer_0/attention'),
                                            ('self_prefix', 'decoder/layer_0/attention'),
                                            ('cross_prefix', 'decoder/layer_0/cross_attention')])
def test_t5_locations_are_switchable(switch, missing):
  model, params, args = _t5()
  everywhere, _ = add_adapter(model, params, 'a', get_method('prefix_tuning', bottleneck_size=8),
                              jax.random.key(1), *args)
  assert len(everywhere.adapter('a').sites) == 6  # 2 encoder + 2 self + 2 cross
  spliced, grafted = add_adapter(model, params, 'a', get_method('prefix_tuning', bottleneck_size=8,
                                                                **{switch: False}),
                                 jax.random.key(1), *args)
  paths = {s.path for s in spliced.adapter('a').sites}
  assert len(paths) == 4 and f'{missing}/prefix' not in paths
  shared = set(grafted['adapters']['a']['shared'])
  assert shared == {'encoder_prefix', 'self_prefix', 'cross_prefix'} - {switch}
  out = np.asarray(spliced.apply(grafted, *args, active='a'))
  assert np.abs(out - np.asarray(model.apply({'params': params}, *args))).max() > 1e-3


def test_eject_equals_the_reparameterised_prefix():
  model, params, args = _t5()
  spliced, params = add_adapter(model, params, 'a', get_method('prefix_tuning', prefix_length=P,
                                                               bottleneck_size=8),
                                jax.random.key(1), *args)
  before = np.asarray(spliced.apply(params, *args, active='a'))
  ejected, flat_params = eject_adapter(spliced, params, 'a')
  assert ejected.adapter('a').method.flat
  assert 'a' not in flat_params.get('adapters', {})
  leaves = [p for p in traverse_util.flatten_dict(flat_params, sep='/') if '/adapters/a/' in p]
  assert leaves and all(p.endswith('/prefixes') for p in leaves)
  np.testing.assert_allclose(ejected.apply(flat_params, *args, active='a'), before, rtol=1e-5,
                             atol=1e-5)


def test_eject_keeps_the_position_shift():
  model, params, ids, mask = _bert()
  method = get_method('prefix_tuning', prefix_length=P, bottleneck_size=8, positions='after_prefix')
  spliced, params = add_adapter(model, params, 'a', method, jax.random.key(1), ids, mask)
  before = np.asarray(spliced.apply(params, ids, mask, active='a'))
  # The same prefix without the shift gives other logits (the real tokens' positions differ).
  unshifted, other = add_adapter(model, params, 'b', dataclasses.replace(method, positions='none'),
                                 jax.random.key(1), ids, mask)
  other = traverse_util.flatten_dict(other, sep='/')
  for path, value in traverse_util.flatten_dict(params, sep='/').items():
    if '/a/' in f'/{path}':
      other[path.replace('adapters/a/', 'adapters/b/')] = value
  other = traverse_util.unflatten_dict(other, sep='/')
  assert np.abs(np.asarray(unshifted.apply(other, ids, mask, active='b')) - before).max() > 1e-3
  ejected, flat_params = eject_adapter(spliced, params, 'a')
  assert ejected.adapter('a').method.positions == 'after_prefix'
  np.testing.assert_allclose(ejected.apply(flat_params, ids, mask, active='a'), before, rtol=1e-5,
                             atol=1e-5)


def test_stack_concatenates_prefixes_and_other_compositions_are_refused():
  hidden = jax.random.normal(jax.random.key(0), (2, 5, 32))
  mask = jnp.ones((2, 1, 1, 5), bool)
  model = SelfAttention(BERT)
  params = model.init(jax.random.key(1), hidden, mask, True)['params']
  spliced, params = add_adapter(model, params, 'a', _flat_prefix((('prefix', 'keys_values'),), 2),
                                jax.random.key(2), hidden, mask, True)
  spliced, params = add_adapter(spliced, params, 'b', _flat_prefix((('prefix', 'keys_values'),), 3),
                                jax.random.key(3), hidden, mask, True)
  out = np.asarray(spliced.apply(params, hidden, mask, True, active=Stack('a', 'b')))
  # Stack: 'b' runs on what 'a' returns, so b's prefix comes first, then a's, then the tokens.
  x, heads, dim = np.asarray(hidden, np.float64), 4, 8
  split = lambda a: a.reshape(2, 5, heads, dim)
  q, k, v = (split(_dense(params, x, n)) for n in ('query', 'key', 'value'))
  k, v, m = _with_prefix(*_reshape_prefix(params, 'prefix', heads, dim, 'a'), k, v,
                         np.asarray(mask))
  k, v, m = _with_prefix(*_reshape_prefix(params, 'prefix', heads, dim, 'b'), k, v, m)
  context = _softmax_attention(q, k, v, m, scale=dim ** -0.5).reshape(2, 5, 32)
  np.testing.assert_allclose(out, _dense(params, context, 'output'), rtol=1e-5, atol=1e-5)
  for active in (Average('a', 'b'), Fuse('a', 'b')):
    with pytest.raises(CompositionError, match='no output at a site'):
      spliced.apply(params, hidden, mask, True, active=active)
  with pytest.raises(ValueError, match="AdapterFusion cannot fuse 'a'.*no output at a site"):
    add_fusion(spliced, params, ['a', 'b'], jax.random.key(4))


def test_host_without_a_key_value_hook_is_refused_naming_it():
  model = TinyClassifier()
  ids, mask = tiny_batch()
  with pytest.raises(SiteMatchError, match='does not expose its keys and values.*KeyValueHook'):
    add_adapter(model, init_tiny(model), 'a', get_method('prefix_tuning'), jax.random.key(0),
                ids, mask)
  with pytest.raises(ValueError, match="placement 'keys_values'"):
    get_method('prefix_tuning', sites=(('.*/query', 'output'),))
