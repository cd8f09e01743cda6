"""The blockwise codecs (adapters_jax/quantization/codec.py) against independent references:
bitsandbytes' own NF4 quantiser (PyTorch, CPU), the NF4 table rebuilt from normal quantiles in
float64 as the QLoRA paper defines it, and absmax int8/int4 written here in float64."""

import bitsandbytes.functional as bnb
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from scipy.stats import norm

from adapters_jax import quantization


def _weights(shape, seed=0):
  """Kernel-like values with outliers (heavier tails than a normal), float32."""
  rng = np.random.default_rng(seed)
  return (rng.standard_t(df=5, size=shape) * 0.02).astype(np.float32)


def test_nf4_levels_are_the_qlora_normal_quantiles():
  # QLoRA (Dettmers et al. 2023), bitsandbytes `create_normal_map(offset=0.9677083)`: 8 positive
  # quantiles of N(0, 1) between the offset and 1/2, 7 negative ones, an exact zero, scaled to
  # [-1, 1]. Bug caught: a mistyped or reordered level.
  offset = 0.9677083
  positive = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  negative = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  levels = np.sort(np.concatenate([positive, [0.0], negative]))
  levels /= np.max(np.abs(levels))
  np.testing.assert_allclose(quantization.NF4_LEVELS, levels, atol=1e-7)


@pytest.mark.parametrize('block_size', [64, 32])
def test_nf4_dequantises_to_bitsandbytes_values(block_size):
  # Bugs caught: nearest level chosen wrongly (a midpoint off), scales from the wrong axis or
  # block, nibbles unpacked in the wrong order.
  x = _weights((16, 256))
  reference, state = bnb.quantize_4bit(torch.from_numpy(x), blocksize=block_size,
                                       quant_type='nf4')
  expected = bnb.dequantize_4bit(reference, state).numpy()  # [16, 256]
  q = quantization.quantize(jnp.asarray(x), 'nf4', block_size)
  assert q.codes.dtype == jnp.uint8 and q.codes.shape == (16, 128)
  assert q.scales.shape == (16, 256 // block_size)
  np.testing.assert_allclose(np.asarray(state.absmax).reshape(16, -1), q.scales, rtol=1e-6)
  np.testing.assert_allclose(quantization.dequantize(q), expected, rtol=1e-6, atol=1e-8)


def _absmax_reference(x, kind, block_size):
  """Dequantised `x` [rows, n] by float64 absmax rounding (int8: 127 levels a side, int4: 7;
  nf4: the nearest of `levels`), zero-padding n to whole blocks."""
  x = np.asarray(x, np.float64)
  rows, n = x.shape
  padded = np.pad(x, [(0, 0), (0, -n % block_size)]).reshape(rows, -1, block_size)
  absmax = np.abs(padded).max(axis=-1, keepdims=True)
  unit = padded / np.where(absmax == 0, 1, absmax)
  if kind == 'nf4':
    levels = np.asarray(quantization.NF4_LEVELS, np.float64)
    unit = levels[np.argmin(np.abs(unit[..., None] - levels), axis=-1)]
  else:
    top = {'int8': 127, 'int4': 7}[kind]
    unit = np.round(unit * top) / top
  return (unit * absmax).reshape(rows, -1)[:, :n], np.repeat(absmax[..., 0], block_size, -1)[:, :n]


@pytest.mark.parametrize('kind', ['nf4', 'int4', 'int8'])
@pytest.mark.parametrize('shape', [(8, 192), (6, 100)])
def test_dequantised_kernel_is_the_reference_and_within_the_documented_error(kind, shape):
  # (6, 100): the last dim is no multiple of the block, so the codec pads it. Bugs caught: a
  # rounding that truncates, a wrong level count, padding that leaks into the values, an error
  # bound that the codec does not keep.
  x = _weights(shape, seed=1)
  block_size = 32
  expected, absmax = _absmax_reference(x, kind, block_size)
  q = quantization.quantize(jnp.asarray(x), kind, block_size)
  got = np.asarray(quantization.dequantize(q), np.float64)
  assert got.shape == shape and q.shape == shape
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
  error = np.abs(got - x)
  assert np.all(error <= quantization.ERROR_BOUND[kind] * absmax * (1 + 1e-6) + 1e-9)
  # The bound is tight: some value lands near it (a codec much worse would fail above).
  assert error.max() > 0.5 * (quantization.ERROR_BOUND[kind] * absmax).max() / 4


def test_storage_bits_per_value():
  # NF4 / int4: 4 bits per value plus one float32 scale per block; int8: 8 bits.
  x = jnp.zeros((4096, 4096), jnp.bfloat16)
  shapes = {k: jax.eval_shape(lambda v, k=k: quantization.quantize(v, k, 64), x) for k in
            quantization.KINDS}
  bits = {k: 8 * s.nbytes / x.size for k, s in shapes.items()}
  assert bits == {'nf4': 4.5, 'int4': 4.5, 'int8': 8.5}


def test_zero_block_and_bfloat16_scales_dequantise():
  x = np.zeros((2, 64), np.float32)
  x[1] = _weights((64,), seed=2)
  q = quantization.quantize(jnp.asarray(x), 'nf4', 64)
  np.testing.assert_array_equal(quantization.dequantize(q)[0], 0.0)
  low = q.replace(scales=q.scales.astype(jnp.bfloat16))
  assert quantization.dequantize(low).dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(quantization.dequantize(low), np.float32),
                             quantization.dequantize(q), rtol=1e-2, atol=1e-6)


def test_unknown_kind_and_odd_block_size_name_the_fix():
  with pytest.raises(ValueError, match=r"valid: \['nf4', 'int4', 'int8'\]"):
    quantization.quantize(jnp.ones((2, 64)), 'fp4', 64)
  with pytest.raises(ValueError, match='even number'):
    quantization.quantize(jnp.ones((2, 64)), 'nf4', 7)
