"""Bottleneck adapters: Houlsby et al. 2019, Pfeiffer et al. 2021 and the parallel adapter.

    h <- h + s * up(act(down(LN?(h))))         (sequential, on a site's output)
    y <- y + s * up(act(down(x)))              (parallel to a site, from its input; He et al. 2022)
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo, linear_average
from adapters_jax.nn.activations import get_activation
from adapters_jax.nn.gate import InputGate
from adapters_jax.splicing.sites import ATTENTION_OUTPUT, FFN_BLOCK, FFN_OUTPUT, LAYER_NORM_PARAMS

INITS = ('houlsby', 'zero')


class Bottleneck(nn.Module):
  """Down-projection, nonlinearity, up-projection; residual around it when `residual`.

  Attributes:
    features: width of the output (equal to the input's width when residual).
    bottleneck: width of the hidden layer.
    activation: name of the nonlinearity (see `nn.activations.ACTIVATIONS`).
    residual: add the input to the result (sequential placement).
    scaling: multiplies the up-projection's output.
    layer_norm_before: LayerNorm on the input before the down-projection.
    init_scheme: `houlsby` (both projections truncated normal, std 1e-2: near identity) or `zero`
      (the up-projection starts at zero: exactly the identity / a zero parallel term).
    use_gating: multiply the scaled up-projection by UniPELT's input gate read from x
      (`nn.gate.InputGate`), before the residual (AdapterHub's `use_gating`).
  """

  features: int
  bottleneck: int
  activation: str = 'gelu'
  residual: bool = True
  scaling: float = 1.0
  layer_norm_before: bool = False
  init_scheme: str = 'houlsby'
  use_gating: bool = False

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True):
    del shared, deterministic
    near_identity = nn.initializers.truncated_normal(stddev=1e-2)
    up_init = near_identity if self.init_scheme == 'houlsby' else nn.initializers.zeros
    h = x
    if self.layer_norm_before:
      h = nn.LayerNorm(name='layer_norm')(h)
    h = nn.Dense(self.bottleneck, kernel_init=near_identity, name='down')(h)  # [..., bottleneck]
    h = get_activation(self.activation)(h)
    h = nn.Dense(self.features, kernel_init=up_init, name='up')(h)  # [..., features]
    h = h * jnp.asarray(self.scaling, h.dtype)
    if self.use_gating:
      h = h * InputGate(name='gate')(x).astype(h.dtype)
    return x + h if self.residual else h


@dataclasses.dataclass(frozen=True)
class BottleneckConfig(MethodConfig):
  """A bottleneck adapter.

  Attributes:
    size: bottleneck width m; if None, `features // reduction_factor`.
    reduction_factor: used when `size` is None.
    activation: gelu, gelu_tanh, relu, swish or tanh.
    scaling: multiplier of the adapter's output (parallel adapters use 4.0 in He et al.).
    layer_norm_before: LayerNorm on the adapter's input.
    init: `houlsby` (near identity) or `zero` (exact identity at start).
    use_gating: UniPELT's per-example sigmoid gate on the adapter's output, read from its input.
  """

  kind = 'bottleneck'
  fusable = True
  sites: tuple[tuple[str, str], ...] = ((ATTENTION_OUTPUT, 'output'), (FFN_OUTPUT, 'output'))
  size: int | None = 64
  reduction_factor: float | None = None
  activation: str = 'gelu'
  scaling: float = 1.0
  layer_norm_before: bool = False
  init: str = 'houlsby'
  use_gating: bool = False

  def __post_init__(self):
    super().__post_init__()
    get_activation(self.activation)
    if self.init not in INITS:
      raise ValueError(f'Unknown init {self.init!r}; valid inits: {INITS}.')
    if self.size is None and not self.reduction_factor:
      raise ValueError('Give either size or reduction_factor.')
    if any(placement == 'input' for _, placement in self.sites):
      raise ValueError("Bottleneck adapters go on a site's output or in parallel to it, "
                       "not on its input; valid placements: ('output', 'parallel').")

  @property
  def reads_every_position(self) -> bool:
    return self.use_gating  # the gate averages over the sequence

  def bottleneck_size(self, features: int) -> int:
    if self.size is not None:
      return int(self.size)
    return max(1, int(features // self.reduction_factor))

  def make_module(self, site: SiteInfo) -> nn.Module:
    return Bottleneck(features=site.out_features, bottleneck=self.bottleneck_size(site.features),
                      activation=self.activation, residual=site.placement == 'output',
                      scaling=self.scaling,
                      layer_norm_before=self.layer_norm_before, init_scheme=self.init,
                      use_gating=self.use_gating)

  def make_delta_module(self, site: SiteInfo) -> nn.Module:
    return self.make_module(site).clone(residual=False)

  def check_average(self, how):
    if how == 'exact':
      raise ValueError("Bottleneck adapters are nonlinear: no parameter average equals the output "
                       "average. Use how='linear' (an interpolation) or Average(...) at apply time.")

  def average(self, methods, site_params, weights, how):
    self.check_average(how)
    return linear_average(methods, site_params, weights)


def houlsby() -> BottleneckConfig:
  """Houlsby et al. 2019: two adapters per layer (after the attention output projection and after the
  FFN output projection, before residual + LayerNorm), size 64, GELU, near-identity init; layer norms
  are trained too (the task head is trained by the training config)."""
  return BottleneckConfig(sites=((ATTENTION_OUTPUT, 'output'), (FFN_OUTPUT, 'output')), size=64,
                          activation='gelu', init='houlsby', train_also=(LAYER_NORM_PARAMS,))


def double_seq_bn() -> BottleneckConfig:
  """Houlsby's adapters as AdapterHub's `double_seq_bn` trains them: the base's layer norms stay frozen,
  so the adapter is self-contained (an AdapterHub export changes no base weight)."""
  return dataclasses.replace(houlsby(), train_also=())


def pfeiffer() -> BottleneckConfig:
  """Pfeiffer et al. 2021: one adapter per layer after the FFN, reduction factor 16, ReLU."""
  return BottleneckConfig(sites=((FFN_OUTPUT, 'output'),), size=None, reduction_factor=16,
                          activation='relu', init='zero')


def parallel() -> BottleneckConfig:
  """He et al. 2022: a bottleneck parallel to the feed-forward block, scaled by 4, ReLU."""
  return BottleneckConfig(sites=((FFN_BLOCK, 'parallel'),), size=None, reduction_factor=16,
                          activation='relu', scaling=4.0, init='zero')

