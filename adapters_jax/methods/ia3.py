"""(IA)^3 (Liu et al. 2022): learned vectors that rescale keys, values and the FFN intermediate.

    k <- l_k * k,   v <- l_v * v,   ffn: (l_ff * act(x W1)) W2

Each vector starts at 1, so the spliced model starts equal to the base model. The FFN vector scales
the *input* of the second FFN projection. All three fold into the base weights (`merge`).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from adapters_jax.methods.base import MethodConfig, SiteInfo, linear_average
from adapters_jax.splicing.sites import FFN_OUTPUT, KEY, VALUE


class IA3(nn.Module):
  """Elementwise rescaling by a learned vector `scale` [features], initialised to ones."""

  features: int

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True):
    del shared, deterministic
    scale = self.param('scale', nn.initializers.ones, (self.features,))  # [features]
    return x * scale.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class IA3Config(MethodConfig):
  """(IA)^3: rescale the output of keys and values (`output` placement) and the input of the
  second FFN projection (`input` placement)."""

  kind = 'ia3'
  sites: tuple[tuple[str, str], ...] = ((KEY, 'output'), (VALUE, 'output'), (FFN_OUTPUT, 'input'))

  def __post_init__(self):
    super().__post_init__()
    if any(placement == 'parallel' for _, placement in self.sites):
      raise ValueError("(IA)3 rescales a site's output or input; valid placements: "
                       "('output', 'input').")

  def make_module(self, site: SiteInfo) -> nn.Module:
    return IA3(features=site.features)

  def check_average(self, how):
    pass  # exact and linear both exist

  def average(self, methods, site_params, weights, how):
    # The rescaling is linear in the scale: the average of scales is the average of outputs.
    if how == 'exact':
      return self, linear_average([self] * len(methods), site_params, weights)[1]
    return linear_average(methods, site_params, weights)

  def check_merge(self):
    pass  # folds into the kernel (and bias)

  def merge(self, host_params, adapter_params, site):
    return _rescale(host_params, adapter_params['scale'], site, invert=False)

  def unmerge(self, host_params, adapter_params, site):
    return _rescale(host_params, adapter_params['scale'], site, invert=True)


def _rescale(host_params, scale, site: SiteInfo, invert: bool):
  scale = 1.0 / scale if invert else scale
  kernel = host_params['kernel']  # [in, out]
  if site.placement == 'input':
    # (l * x) W = x (diag(l) W): scale the kernel's rows.
    return {**host_params, 'kernel': kernel * scale[:, None]}
  # l * (x W + b) = x (W diag(l)) + l * b: scale the columns and the bias.
  merged = {**host_params, 'kernel': kernel * scale[None, :]}
  if 'bias' in host_params:
    merged['bias'] = host_params['bias'] * scale
  return merged


def ia3() -> IA3Config:
  """Liu et al. 2022: keys, values and the FFN intermediate."""
  return IA3Config()
