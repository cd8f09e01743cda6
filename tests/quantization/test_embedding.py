"""Quantised embedding tables looked up row by row (adapters_jax/quantization/embedding.py): the rows
equal dequantise-then-take bit for bit, our backbones give the same outputs with the tables kept
quantised (to float32 rounding), and the lookup never makes the whole dequantised table."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import quantization
from adapters_jax.models import (
  DecoderLM,
  EncoderConfig,
  T5Config,
  T5ForConditionalGeneration,
  classification_model,
)
from adapters_jax.quantization.embedding import QuantizableEmbed, take_rows, whole_table
from tests.models.tiny_decoders import TINY_DECODERS

IDS = np.array([[5, 9, 13, 2, 40, 7, 1, 33], [8, 8, 21, 60, 3, 0, 12, 4]], np.int32)


@pytest.mark.parametrize('kind', quantization.KINDS)
@pytest.mark.parametrize('features,block', [(48, 16), (48, 32), (30, 64)],
                         ids=['block-divides', 'rows-padded', 'block-wider-than-row'])
@pytest.mark.parametrize('scale_dtype', [jnp.float32, jnp.bfloat16])
def test_rows_equal_dequantise_then_take_bit_for_bit(kind, features, block, scale_dtype):
  table = jax.random.normal(jax.random.key(0), (61, features)).astype(scale_dtype)
  stored = quantization.quantize(table, kind, block)
  stored = stored.replace(scales=stored.scales.astype(scale_dtype))
  got = np.asarray(jax.jit(take_rows)(stored, jnp.asarray(IDS)))
  want = np.asarray(quantization.dequantize(stored))[IDS]  # [2, 8, features]
  assert got.shape == (*IDS.shape, features) and got.dtype == want.dtype
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(whole_table(stored)), np.asarray(quantization.dequantize(stored)))


def test_quantizable_embed_is_flax_embed_on_floats_and_on_the_dequantised_table():
  ours, flax_embed = (cls(61, 24, dtype=jnp.float32) for cls in (QuantizableEmbed, nn.Embed))
  params = flax_embed.init(jax.random.key(0), jnp.asarray(IDS))
  assert jax.tree.structure(ours.init(jax.random.key(0), jnp.asarray(IDS))) == jax.tree.structure(params)
  query = jax.random.normal(jax.random.key(1), (3, 24))
  for method in (None, 'attend'):
    args = (query,) if method else (jnp.asarray(IDS),)
    kwargs = {'method': method} if method else {}
    np.testing.assert_array_equal(ours.apply(params, *args, **kwargs),
                                  flax_embed.apply(params, *args, **kwargs))
    stored = {'params': {'embedding': quantization.quantize(params['params']['embedding'], 'nf4', 16)}}
    dequantised = {'params': {'embedding': quantization.dequantize(stored['params']['embedding'])}}
    np.testing.assert_array_equal(ours.apply(stored, *args, **kwargs),
                                  flax_embed.apply(dequantised, *args, **kwargs))


def _decoder(family):
  model = DecoderLM(TINY_DECODERS[family])
  return model, model.init(jax.random.key(0), jnp.asarray(IDS))['params'], (jnp.asarray(IDS),)


def _bert():
  config = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                         max_position_embeddings=32)
  model = classification_model(config, num_labels=3)
  return model, model.init(jax.random.key(0), jnp.asarray(IDS))['params'], (jnp.asarray(IDS),)


def _t5():
  config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
                    dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=True)
  model = T5ForConditionalGeneration(config)
  args = (jnp.asarray(IDS), jnp.ones_like(IDS), jnp.asarray(IDS[:, :5]))
  return model, model.init(jax.random.key(0), *args)['params'], args


HOSTS = {'llama': lambda: _decoder('llama'), 'gpt2-tied-learned-positions': lambda: _decoder('gpt2'),
         'bert': _bert, 't5-tied-relative-bias': _t5}


@pytest.mark.parametrize('host', list(HOSTS))
def test_backbones_give_the_same_outputs_with_tables_kept_quantised(host):
  model, params, args = HOSTS[host]()
  frozen = jax.tree.map(lambda _: False, params)
  stored = quantization.quantize_frozen(params, frozen, 'nf4', 16)
  tables = [p for p, leaf in traverse_util.flatten_dict(stored, sep='/').items()
            if p.endswith('/embedding') and quantization.is_quantized(leaf)]
  assert tables  # the embedding tables are quantised

  def forward(keep_tables):
    return jax.jit(lambda p: model.apply({'params': quantization.dequantize_tree(p, keep_tables)},
                                         *args))(stored)

  # The same rows (bit for bit above); XLA may fuse the row scaling into the next op differently
  # (a fused multiply-add), so the whole model agrees to float32 rounding.
  np.testing.assert_allclose(np.asarray(forward(True)), np.asarray(forward(False)), rtol=1e-5, atol=1e-6)


def _float_shapes(jaxpr):
  """Every float array shape an equation of `jaxpr` (and its sub-jaxprs) makes."""
  shapes = set()
  for eqn in jaxpr.eqns:
    shapes.update(tuple(v.aval.shape) for v in eqn.outvars
                  if jnp.issubdtype(getattr(v.aval, 'dtype', jnp.int32), jnp.floating))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax.extend.core.Jaxpr):
          shapes |= _float_shapes(sub)
  return shapes


def test_the_lookup_never_makes_the_whole_dequantised_table():
  # Llama's head is untied ([hidden, vocab]): a [vocab, hidden] float array is the embedding's.
  model, params, args = _decoder('llama')
  stored = quantization.quantize_frozen(params, jax.tree.map(lambda _: False, params), 'nf4', 16)
  table_shape = params['embeddings']['word_embeddings']['embedding'].shape  # [61, 32]

  def shapes(keep_tables):
    jaxpr = jax.make_jaxpr(lambda p: model.apply(
        {'params': quantization.dequantize_tree(p, keep_tables)}, *args))(stored)
    return _float_shapes(jaxpr.jaxpr)

  assert table_shape in shapes(False)
  assert table_shape not in shapes(True)
  assert (*IDS.shape, table_shape[1]) in shapes(True)  # only the looked-up rows
