"""UniPELT's prefix gate (`use_gating`) against a float64 reference written here: the prefix keys and
values scaled per example by the mean over the query-side positions of sigmoid(x W + b) (AdapterHub's
`PrefixTuningLayer`): on BERT's self-attention and on T5's cross-attention, where the gate must read
the decoder's states (the queries' input), not the encoder memory the keys come from; one gate for
keys and values, or one each (`shared_gating=False`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import add_adapter, get_method
from adapters_jax.interop import prefix_layout
from adapters_jax.interop.naming import InteropError
from adapters_jax.models.bert import SelfAttention
from tests.methods.splice_checks import perturb
from tests.methods.test_prefix_tuning import (
  BERT,
  T5,
  P,
  _dense,
  _reshape_prefix,
  _softmax_attention,
  _T5AttentionHost,
  _with_prefix,
)


def _gate64(params, site, x):
  """float64 reference: [batch, outputs] = mean over positions of sigmoid(x W + b)."""
  flat = traverse_util.flatten_dict(params, sep='/')
  kernel = np.asarray(flat[f'{site}/adapters/a/gate/gate/kernel'], np.float64)
  bias = np.asarray(flat[f'{site}/adapters/a/gate/gate/bias'], np.float64)
  return (1.0 / (1.0 + np.exp(-(x @ kernel + bias)))).mean(axis=1)


def _gated_prefix(site, shared_gating):
  return get_method('prefix_tuning_flat', prefix_length=P, sites=((site, 'keys_values'),),
                    use_gating=True, shared_gating=shared_gating)


@pytest.mark.parametrize('shared_gating', [True, False], ids=['shared', 'keys_and_values'])
def test_bert_attention_with_a_gated_prefix_equals_float64_reference(shared_gating):
  hidden = jax.random.normal(jax.random.key(0), (2, 5, 32))
  mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)[:, None, None, :]
  model = SelfAttention(BERT)
  params = model.init(jax.random.key(1), hidden, mask, True)['params']
  spliced, params = add_adapter(model, params, 'a', _gated_prefix('prefix', shared_gating),
                                jax.random.key(2), hidden, mask, True)
  gate_shape = params['prefix']['adapters']['a']['gate']['gate']['kernel'].shape
  assert gate_shape == (32, 1 if shared_gating else 2)
  params = perturb(params, 'a', scale=1.0)  # gates far from 1/2 and different per example
  out = np.asarray(spliced.apply(params, hidden, mask, True, active='a'))
  x, heads, dim = np.asarray(hidden, np.float64), 4, 8
  split = lambda a: a.reshape(2, 5, heads, dim)
  q, k, v = (split(_dense(params, x, n)) for n in ('query', 'key', 'value'))
  gate = _gate64(params, 'prefix', x)  # [batch, 1 or 2]
  assert np.abs(gate[0] - gate[1]).max() > 1e-2
  pk, pv = _reshape_prefix(params, 'prefix', heads, dim)
  k, v, m = _with_prefix(pk, pv, k, v, np.asarray(mask))
  k[:, :P] *= gate[:, 0, None, None, None]
  v[:, :P] *= gate[:, -1, None, None, None]
  context = _softmax_attention(q, k, v, m, scale=dim ** -0.5).reshape(2, 5, 32)
  np.testing.assert_allclose(out, _dense(params, context, 'output'), rtol=1e-5, atol=1e-5)


def test_t5_cross_attention_gate_reads_the_queries_input():
  hidden = jax.random.normal(jax.random.key(0), (2, 4, 32))
  memory = jax.random.normal(jax.random.key(3), (2, 6, 32))
  mask = jnp.ones((2, 1, 1, 6), bool).at[1, ..., 4:].set(False)
  model = _T5AttentionHost(T5)
  params = model.init(jax.random.key(1), hidden, memory, None, mask)['params']
  spliced, params = add_adapter(model, params, 'a', _gated_prefix('attention/prefix', True),
                                jax.random.key(2), hidden, memory, None, mask)
  params = perturb(params, 'a', scale=1.0)
  out = np.asarray(spliced.apply(params, hidden, memory, None, mask, active='a'))
  p, heads, dim = params['attention'], 4, 6
  x, mem = np.asarray(hidden, np.float64), np.asarray(memory, np.float64)
  q = _dense(p, x, 'query').reshape(2, 4, heads, dim)
  k = _dense(p, mem, 'key').reshape(2, 6, heads, dim)
  v = _dense(p, mem, 'value').reshape(2, 6, heads, dim)
  gate = _gate64(params, 'attention/prefix', x)[:, 0]  # the decoder side, not `mem`
  pk, pv = _reshape_prefix(params, 'attention/prefix', heads, dim)
  k, v, m = _with_prefix(pk, pv, k, v, np.asarray(mask))
  k[:, :P] *= gate[:, None, None, None]
  v[:, :P] *= gate[:, None, None, None]
  context = _softmax_attention(q, k, v, m).reshape(2, 4, heads * dim)  # T5: no 1/sqrt(d)
  np.testing.assert_allclose(out, _dense(p, context, 'output'), rtol=1e-5, atol=1e-5)


def test_the_stacked_layout_refuses_a_gated_prefix():
  hidden = jax.random.normal(jax.random.key(0), (2, 5, 32))
  mask = jnp.ones((2, 1, 1, 5), bool)
  model = SelfAttention(BERT)
  params = model.init(jax.random.key(1), hidden, mask, True)['params']
  spliced, params = add_adapter(model, params, 'a', _gated_prefix('prefix', True),
                                jax.random.key(2), hidden, mask, True)
  with pytest.raises(InteropError, match='gated prefix.*holds no gates'):
    prefix_layout.to_stacked(spliced.adapter('a'), params)
