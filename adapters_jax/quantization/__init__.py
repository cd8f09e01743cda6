"""A quantised frozen base (QLoRA): blockwise NF4/int4/int8 codecs and the frozen tree's view."""

from adapters_jax.quantization.codec import (
  ERROR_BOUND,
  KINDS,
  NF4_LEVELS,
  QuantizedArray,
  dequantize,
  quantize,
)
from adapters_jax.quantization.frozen_base import (
  dequantize_tree,
  describe,
  is_quantized,
  logical,
  quantize_frozen,
)

__all__ = ['ERROR_BOUND', 'KINDS', 'NF4_LEVELS', 'QuantizedArray', 'dequantize', 'dequantize_tree',
           'describe',
           'is_quantized', 'logical', 'quantize', 'quantize_frozen']
