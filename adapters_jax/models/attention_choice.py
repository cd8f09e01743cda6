"""Which attention computation runs: the CPU path or the accelerator path, which fused kernel, and
how many head groups (see `bert.SelfAttention`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adapters_jax.models.encoder_config import EncoderConfig


def attention_implementation(config: EncoderConfig) -> str:
  """'cpu' or 'accelerator': `config.attention_impl`, or by backend when it is 'auto'."""
  if config.attention_impl != 'auto':
    return config.attention_impl
  return 'cpu' if jax.default_backend() == 'cpu' else 'accelerator'


def fused_kernel(backend: str, dtype, head_dim: int) -> str:
  """The `implementation=` of `jax.nn.dot_product_attention` on the accelerator path.

  'cudnn' on a GPU when cuDNN's fused attention applies: float16/bfloat16 inputs and a head
  dimension that is a multiple of 8 (and at most 128); 'xla' otherwise (float32 on GPU, TPU,
  CPU). `implementation=None` would mean XLA too, so the choice is made here.
  """
  fused_dtypes = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  fits = jnp.dtype(dtype) in fused_dtypes and head_dim % 8 == 0 and head_dim <= 128
  return 'cudnn' if backend == 'gpu' and fits else 'xla'


def head_groups(config: EncoderConfig) -> int:
  """How many independent groups the attention heads are computed in (see `SelfAttention`).

  `config.attention_head_groups` when set (> 0). Otherwise, on CPU: 4 (the fastest measured on
  2 cores, docs/performance.md), or the largest divisor of `num_heads` below it, when the
  layers are scanned or there are at most 12 of them; 1 for deeper unscanned stacks, whose
  compile time grows with every group of every layer (BERT-large, 24 unscanned layers: 21.5 s
  with 1 group, 34 s with 4). On accelerators 1: one batched matmul over all heads is the
  efficient form there.
  """
  if config.attention_head_groups:
    return config.attention_head_groups
  if jax.default_backend() != 'cpu' or (not config.scan_layers and config.num_layers > 12):
    return 1
  return max(g for g in range(1, 5) if config.num_heads % g == 0)
