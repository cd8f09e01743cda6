"""Compacter and Compacter++ (Karimi Mahabadi et al. 2021): bottleneck adapters with PHM projections.

A parameterised hypercomplex multiplication (PHM) layer builds its kernel as a sum of Kronecker
products,

    W = sum_{i=1..n} A_i (x) B_i,     A_i: [n, n] "rule" matrices, B_i = s_i t_i: [in/n, out/n]

with each B_i a low-rank (rank 1 by default) product. The A_i are shared by every PHM layer of the
adapter (all layers, both projections); they live once in the tree under `adapters/<name>/shared`.

Parameters per adapter with rank-1 B_i (hidden d, bottleneck m): down d + m (+ m bias),
up m + d (+ d bias); plus n^3 shared once.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo, get_activation
from adapters_jax.sites import ATTENTION_OUTPUT, FFN_OUTPUT


def kron_sum(rule: jax.Array, factors: jax.Array) -> jax.Array:
  """sum_i kron(rule[i], factors[i]).

  Args:
    rule: [n, n, n] the A_i.
    factors: [n, p, q] the B_i.

  Returns:
    [n * p, n * q] kernel.
  """
  n, p, q = factors.shape
  # kron(A, B)[a * p + c, b * q + d] = A[a, b] B[c, d]
  return jnp.einsum('iab,icd->acbd', rule, factors).reshape(n * p, n * q)


class PHMRule(nn.Module):
  """The shared A_i, [n, n, n]."""

  n: int = 4
  init_std: float = 0.01

  @nn.compact
  def __call__(self):
    return self.param('rule', nn.initializers.normal(self.init_std), (self.n, self.n, self.n))


class PHMDense(nn.Module):
  """A dense layer whose kernel is `kron_sum(rule, s @ t)`.

  Attributes:
    features: output width (divisible by n).
    n: number of Kronecker summands.
    rank: rank of each B_i.
    zero_init: start with t = 0 (kernel 0), so a residual adapter starts as the identity.
  """

  features: int
  n: int = 4
  rank: int = 1
  zero_init: bool = False

  @nn.compact
  def __call__(self, x, rule):
    n, in_features = self.n, x.shape[-1]
    glorot = nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
    t_init = nn.initializers.zeros if self.zero_init else glorot
    s = self.param('s', glorot, (n, in_features // n, self.rank))  # [n, in/n, rank]
    t = self.param('t', t_init, (n, self.rank, self.features // n))  # [n, rank, out/n]
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    kernel = kron_sum(rule, s @ t)  # [in, out]
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


class CompacterAdapter(nn.Module):
  """h + up(act(down(h))) with PHM projections sharing `shared['rule']`."""

  features: int
  bottleneck: int
  n: int = 4
  rank: int = 1
  activation: str = 'gelu'

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True):
    del deterministic
    rule = shared['rule']  # [n, n, n]
    h = PHMDense(self.bottleneck, self.n, self.rank, name='down')(x, rule)  # [..., m]
    h = get_activation(self.activation)(h)
    h = PHMDense(self.features, self.n, self.rank, zero_init=True, name='up')(h, rule)
    return x + h


@dataclasses.dataclass(frozen=True)
class CompacterConfig(MethodConfig):
  """Compacter: Houlsby placement, PHM projections, n=4, rank-1 B_i, shared rule matrices.

  Attributes:
    reduction_factor: bottleneck m = features // reduction_factor (must be divisible by n).
    size: bottleneck m; overrides reduction_factor when set.
    n: number of Kronecker summands (divides the hidden size and m).
    rank: rank of each B_i.
    activation: nonlinearity.
    rule_init_std: stddev of the shared rule matrices' normal init.
  """

  kind = 'compacter'
  sites: tuple[tuple[str, str], ...] = ((ATTENTION_OUTPUT, 'output'), (FFN_OUTPUT, 'output'))
  reduction_factor: int = 32
  size: int | None = None
  n: int = 4
  rank: int = 1
  activation: str = 'gelu'
  rule_init_std: float = 0.01

  def __post_init__(self):
    super().__post_init__()
    get_activation(self.activation)
    if any(placement != 'output' for _, placement in self.sites):
      raise ValueError("Compacter adapters go on a site's output; valid placements: ('output',).")

  def bottleneck_size(self, features: int) -> int:
    return int(self.size) if self.size is not None else max(1, features // self.reduction_factor)

  def make_module(self, site: SiteInfo) -> nn.Module:
    m = self.bottleneck_size(site.features)
    if site.features % self.n or m % self.n:
      raise ValueError(f'Compacter needs n={self.n} to divide the width ({site.features} at '
                       f'{site.path}) and the bottleneck ({m}); choose another n or size.')
    return CompacterAdapter(features=site.features, bottleneck=m, n=self.n, rank=self.rank,
                            activation=self.activation)

  def make_shared_module(self) -> nn.Module:
    return PHMRule(n=self.n, init_std=self.rule_init_std)


def compacter() -> CompacterConfig:
  """Compacter: after the attention output and the FFN output projections."""
  return CompacterConfig()


def compacter_pp() -> CompacterConfig:
  """Compacter++: one adapter per layer, after the FFN output projection only."""
  return CompacterConfig(sites=((FFN_OUTPUT, 'output'),))
