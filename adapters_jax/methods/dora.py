"""DoRA (Liu et al. 2024): the site's weight split into a magnitude and a direction; LoRA updates
the direction, a trained vector the magnitude.

    W' = m * (W + s A B) / ||W + s A B||_c        ||.||_c: the norm of each output column, [out]
    y  = x W' + b = x W + b + (m / n - 1) * (dropout(x) W) + (m / n) * s * dropout(x) A B

with W the frozen kernel [in, out], A [in, r] random, B [r, out] zero, s = alpha / r (alpha / sqrt(r)
with rsLoRA), m [out] initialised to ||W||_c, and n = ||W + s A B||_c treated as a constant in the
backward pass (the paper's section 4.3, as PEFT's `use_dora`). At init B = 0 and m = n, so the
spliced model starts equal to the base model.

The adapter reads its site's frozen kernel (`reads_site_params`): at init for m, at every call for
x W and n. The kernel's layout (`[in, out]` or `[out, in]`, `splicing.kernel_layouts`) is read from
the site's module when the adapter is made. `merge` folds W' into the kernel exactly; `unmerge`
cannot recover W from W' (the norms n are lost), so it is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.methods.lora import check_parallel_low_rank, lora_delta, lora_scaling
from adapters_jax.nn.dropout import Dropout
from adapters_jax.splicing.kernel_layouts import probe_layout
from adapters_jax.splicing.sites import QUERY, VALUE


def column_norm(kernel: jax.Array) -> jax.Array:
  """||kernel||_c: the L2 norm of each output column of an [in, out] kernel, [out] (float32)."""
  return jnp.linalg.norm(kernel.astype(jnp.float32), axis=0)


class DoRA(nn.Module):
  """The term `(m / n - 1) * (x W) + (m / n) * s * x A B` (added to the site's output).

  Attributes:
    out_features: width of the site's output.
    kernel_layout: how the site stores its kernel: 'in_out' ([in, out]) or 'out_in' ([out, in]).
    rank, alpha, use_rslora, dropout: the LoRA part (`methods.lora.LoRA`).
  """

  out_features: int
  kernel_layout: str = 'in_out'
  rank: int = 8
  alpha: float = 16.0
  use_rslora: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True, site_params=None):
    del shared
    if site_params is None or 'kernel' not in site_params:
      raise ValueError('DoRA reads its site\'s kernel (site_params=...); splice it with '
                       'adapters_jax.add_adapter, which passes it.')
    kernel = site_params['kernel']
    kernel = kernel.T if self.kernel_layout == 'out_in' else kernel  # [in, out]
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')  # as LoRA's
    lora_a = self.param('lora_a', a_init, (x.shape[-1], self.rank))  # [in, r]
    lora_b = self.param('lora_b', nn.initializers.zeros, (self.rank, self.out_features))  # [r, out]
    magnitude = self.param('magnitude', lambda _: column_norm(kernel))  # [out]
    scaling = lora_scaling(self.alpha, self.rank, self.use_rslora)
    params = {'lora_a': lora_a, 'lora_b': lora_b}
    norm = jax.lax.stop_gradient(column_norm(kernel + lora_delta(params, scaling)))  # [out]
    ratio = (magnitude / norm).astype(x.dtype)
    x = Dropout(self.dropout)(x, deterministic=deterministic)
    base = x @ jax.lax.stop_gradient(kernel).astype(x.dtype)  # [..., out]
    low_rank = (x @ lora_a.astype(x.dtype)) @ lora_b.astype(x.dtype)
    return (ratio - 1) * base + ratio * jnp.asarray(scaling, x.dtype) * low_rank


def dora_kernel(kernel: jax.Array, adapter_params: dict[str, Any], scaling: float) -> jax.Array:
  """W' = m * (W + s A B) / ||W + s A B||_c, [in, out] (float32)."""
  updated = kernel.astype(jnp.float32) + lora_delta(adapter_params, scaling)
  return updated * (adapter_params['magnitude'] / column_norm(updated))


@dataclasses.dataclass(frozen=True)
class DoRAConfig(MethodConfig):
  """DoRA on matched dense layers (default: attention query and value, as LoRA).

  Attributes:
    rank, alpha, dropout, use_rslora: the LoRA part (`methods.lora.LoRAConfig`).
  """

  kind = 'dora'
  reads_site_params = True
  sites: tuple[tuple[str, str], ...] = ((QUERY, 'parallel'), (VALUE, 'parallel'))
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  use_rslora: bool = False

  def __post_init__(self):
    super().__post_init__()
    check_parallel_low_rank('DoRA', self.sites, self.rank)

  @property
  def scaling(self) -> float:
    return lora_scaling(self.alpha, self.rank, self.use_rslora)

  def make_module(self, site: SiteInfo) -> nn.Module:
    layout, reason = site.kernel_layout, 'no module call was recorded for it'
    if layout is None and site.host_call is not None:
      layout, reason = probe_layout(site.host_call)
    if layout is None:
      raise ValueError(f'DoRA needs the kernel of site {site.path}, but how its module uses a '
                       f'kernel is unknown ({reason}); choose sites that are dense layers.')
    return DoRA(out_features=site.out_features, kernel_layout=layout, rank=self.rank,
                alpha=self.alpha, use_rslora=self.use_rslora, dropout=self.dropout)

  def check_merge(self):
    pass  # folds into the kernel

  def merge(self, host_params, adapter_params, site):
    kernel = host_params['kernel']
    merged = dora_kernel(kernel, adapter_params, self.scaling)
    return {**host_params, 'kernel': merged.astype(kernel.dtype)}

  def unmerge(self, host_params, adapter_params, site):
    raise NotImplementedError(
        'A merged DoRA adapter cannot be unmerged: the merged kernel m * V / ||V||_c no longer holds '
        'the column norms of V = W + s A B. Keep the params from before merge_adapter instead.')


def dora() -> DoRAConfig:
  """Liu et al. 2024 on query and value with LoRA's r=8, alpha=16."""
  return DoRAConfig()
