"""LoRA (Hu et al. 2021): a low-rank update parallel to a dense layer.

    y = x W + b + s * dropout(x) A B,    A: [in, r] random, B: [r, out] zero,   s = alpha / r

so the spliced model starts equal to the base model. rsLoRA (Kalajdzievski 2023, `use_rslora=True`)
scales by s = alpha / sqrt(r) instead, so the update's size does not shrink as the rank grows.
`init_weights='pissa'` / `'pissa_niter_<K>'` / `'olora'` start A and B from the site's kernel instead
(`methods.lora_init`) and leave the residual W - s A B as the frozen kernel (`changes_base`).
`merge` folds s A B into W for inference at the base model's cost; `unmerge` takes it back out.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo, linear_average
from adapters_jax.methods.lora_init import check_init, principal_factors
from adapters_jax.nn.dropout import Dropout
from adapters_jax.nn.gate import InputGate
from adapters_jax.splicing.sites import QUERY, VALUE


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
  """The factor s of the update s A B: alpha / r, or alpha / sqrt(r) for rsLoRA."""
  return alpha / (math.sqrt(rank) if use_rslora else rank)


class LoRA(nn.Module):
  """The low-rank term `s * dropout(x) A B` (added to the site's output).

  Attributes:
    out_features: width of the site's output.
    rank: r.
    alpha: scale numerator; the term is scaled by s = alpha / r (alpha / sqrt(r) with use_rslora).
    dropout: dropout rate on the input of A.
    use_rslora: scale by alpha / sqrt(r) (rsLoRA).
    init_weights: 'default' (A random, B zero), or 'pissa', 'pissa_niter_<K>', 'olora' (A and B from the
      site's kernel, passed at init as `site_params`; `methods.lora_init`).
    kernel_layout: how the site stores its kernel ('in_out' or 'out_in'), read by those inits.
    use_gating: multiply the update by UniPELT's input gate (`nn.gate.InputGate` on x) instead of
      s (AdapterHub's gated LoRA applies no alpha / r scaling).
  """

  out_features: int
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  use_rslora: bool = False
  init_weights: str = 'default'
  kernel_layout: str = 'in_out'
  use_gating: bool = False

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True, site_params=None):
    del shared
    scaling = lora_scaling(self.alpha, self.rank, self.use_rslora)
    # As PEFT: A ~ kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0.
    a_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
    b_init = nn.initializers.zeros
    if self.init_weights != 'default' and self.is_initializing():
      if site_params is None or 'kernel' not in site_params:
        raise ValueError(f"LoRA init_weights={self.init_weights!r} starts from its site's kernel "
                         '(site_params=...); splice it with adapters_jax.add_adapter, which '
                         'passes it.')
      kernel = site_params['kernel']
      kernel = kernel.T if self.kernel_layout == 'out_in' else kernel  # [in, out]
      factor_a, factor_b = principal_factors(kernel, self.rank, scaling, self.init_weights)
      a_init, b_init = (lambda *_: factor_a), (lambda *_: factor_b)
    lora_a = self.param('lora_a', a_init, (x.shape[-1], self.rank))  # [in, r]
    lora_b = self.param('lora_b', b_init, (self.rank, self.out_features))  # [r, out]
    gate = InputGate(name='gate')(x) if self.use_gating else None  # [B, 1, .., 1]
    x = Dropout(self.dropout)(x, deterministic=deterministic)
    h = x @ lora_a.astype(x.dtype)  # [..., r]
    h = h @ lora_b.astype(x.dtype)  # [..., out]
    if gate is not None:
      return h * gate.astype(h.dtype)
    return h * jnp.asarray(scaling, x.dtype)


def lora_delta(adapter_params: dict[str, Any], scaling: float) -> jnp.ndarray:
  """The kernel update s A B, [in, out] (at full float32 precision: merges and PiSSA's residual
  must not round through TF32 or bf16 passes)."""
  return scaling * jnp.matmul(adapter_params['lora_a'], adapter_params['lora_b'],
                              precision=jax.lax.Precision.HIGHEST)


def check_parallel_low_rank(method: str, sites: tuple[tuple[str, str], ...], rank: int) -> None:
  """The checks LoRA, DoRA and VeRA share: every site in parallel, and a rank of at least 1."""
  if any(placement != 'parallel' for _, placement in sites):
    raise ValueError(f"{method} sites must use placement 'parallel'.")
  if rank < 1:
    raise ValueError(f'{method} rank must be >= 1, got {rank}.')


@dataclasses.dataclass(frozen=True)
class LoRAConfig(MethodConfig):
  """LoRA on matched dense layers (default: attention query and value).

  Attributes:
    rank: r.
    alpha: the update is scaled by alpha / r (alpha / sqrt(r) with use_rslora).
    dropout: dropout on the LoRA branch's input.
    use_rslora: rsLoRA's scaling alpha / sqrt(r) (PEFT's `use_rslora`).
    init_weights: 'default' (A random, B zero: the update starts at zero), 'pissa' (A, B: the kernel's r
      principal components), 'pissa_niter_<K>' (the same by a randomized SVD with K iterations)
      or 'olora' (A, B: from the kernel's QR); the last three leave W - s A B as the frozen kernel
      (PEFT's `init_lora_weights`; `methods.lora_init`).
    use_gating: UniPELT's gate: the update is multiplied by a per-example sigmoid gate read from
      the site's input instead of alpha / r (AdapterHub's `use_gating`); such an adapter cannot be
      merged or averaged exactly (the gate depends on the input).
  """

  kind = 'lora'
  sites: tuple[tuple[str, str], ...] = ((QUERY, 'parallel'), (VALUE, 'parallel'))
  rank: int = 8
  alpha: float = 16.0
  dropout: float = 0.0
  use_rslora: bool = False
  init_weights: str = 'default'
  use_gating: bool = False

  def __post_init__(self):
    super().__post_init__()
    check_parallel_low_rank('LoRA', self.sites, self.rank)
    check_init(self.init_weights)
    if self.use_gating and self.init_weights != 'default':
      raise ValueError(f"A gated LoRA starts from zero; use init_weights='default', not "
                       f'{self.init_weights!r}.')

  @property
  def reads_every_position(self) -> bool:
    return self.use_gating  # the gate averages over the sequence

  @property
  def changes_base(self) -> bool:
    return self.init_weights != 'default'

  def make_module(self, site: SiteInfo) -> nn.Module:
    return LoRA(out_features=site.out_features, rank=self.rank, alpha=self.alpha,
                dropout=self.dropout, use_rslora=self.use_rslora, init_weights=self.init_weights,
                kernel_layout=site.kernel_layout or 'in_out', use_gating=self.use_gating)

  @property
  def scaling(self) -> float:
    """s in the update s A B."""
    return lora_scaling(self.alpha, self.rank, self.use_rslora)

  def check_average(self, how):
    if self.use_gating and how == 'exact':
      raise ValueError("Gated LoRA adapters scale their updates by input-dependent gates, so no "
                       "parameter average equals the output average; use how='linear' or "
                       'Average(...) at apply time.')
    if self.changes_base:  # exact and linear both exist for the others
      raise ValueError(f'LoRA adapters with init_weights={self.init_weights!r} each run beside '
                       'their own residual kernel, so they cannot be averaged into one; combine '
                       'them at apply time with Average(...).')

  def average(self, methods, site_params, weights, how):
    """how='exact': A = [A_1 ... A_n] (ranks concatenated), B = [c_1 B_1; ...; c_n B_n] with
    c_i = w_i s_i and alpha = rank (s = 1, rsLoRA off), so x A B = sum_i w_i LoRA_i(x) exactly.
    how='linear': leaf by leaf (not the average of outputs: A B is bilinear)."""
    if how != 'exact':
      return linear_average(methods, site_params, weights)
    rank = sum(m.rank for m in methods)
    config = dataclasses.replace(self, rank=rank, alpha=float(rank), use_rslora=False,
                                 dropout=max(m.dropout for m in methods))
    lora_a = jnp.concatenate([p['lora_a'] for p in site_params], axis=-1)  # [..., in, sum r]
    lora_b = jnp.concatenate([w * m.scaling * p['lora_b']
                              for w, m, p in zip(weights, methods, site_params, strict=True)],
                             axis=-2)  # [..., sum r, out]
    return config, {'lora_a': lora_a, 'lora_b': lora_b}

  def check_merge(self):
    if self.use_gating:
      raise NotImplementedError('A gated LoRA (use_gating=True) scales its update by a gate read '
                                'from each input, so it cannot be folded into the kernel; run it '
                                'spliced.')

  def merge(self, host_params, adapter_params, site):
    kernel = host_params['kernel']
    delta = lora_delta(adapter_params, self.scaling)
    return {**host_params, 'kernel': kernel + delta.astype(kernel.dtype)}

  def unmerge(self, host_params, adapter_params, site):
    kernel = host_params['kernel']
    delta = lora_delta(adapter_params, self.scaling)
    return {**host_params, 'kernel': kernel - delta.astype(kernel.dtype)}


def lora() -> LoRAConfig:
  """Hu et al. 2021 GLUE setting: r=8, alpha=16 on query and value."""
  return LoRAConfig()
