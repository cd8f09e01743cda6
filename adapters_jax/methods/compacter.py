"""Compacter, Compacter++ and PHM-Adapter (Karimi Mahabadi et al. 2021): bottleneck adapters with PHM
projections.

A parameterised hypercomplex multiplication (PHM) layer builds its kernel as a sum of Kronecker
products,

    W = sum_{i=1..n} A_i (x) B_i,     A_i: [n, n] "rule" matrices, B_i: [in/n, out/n]

Compacter makes each B_i = s_i t_i low-rank (rank 1) and shares the A_i across every PHM layer of
the adapter (all layers, both projections): they live once in the tree under
`adapters/<name>/shared`. PHM-Adapter (the paper's row of that name) keeps each B_i a full
[in/n, out/n] matrix (`rank=None`) and gives every PHM layer its own A_i (`shared_rule=False`).

Parameters per adapter (hidden d, bottleneck m; biases m and d included):
  rank-1 B_i, shared rule (Compacter):    (d + m) + (m + d)             + n^3 once for all layers
  full B_i, per-layer rules (PHM-Adapter): (d m / n + m) + (d m / n + d) + 2 n^3
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.nn.activations import get_activation
from adapters_jax.splicing.sites import ATTENTION_OUTPUT, FFN_OUTPUT


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
  """A dense layer whose kernel is `kron_sum(rule, B)`, B = s @ t (low rank) or one full tensor.

  Attributes:
    features: output width (divisible by n).
    n: number of Kronecker summands.
    rank: rank of each B_i (params `s` [n, in/n, rank], `t` [n, rank, out/n]); None: each B_i is a
      full [in/n, out/n] matrix (param `factors` [n, in/n, out/n]).
    zero_init: start with t = 0 (or factors = 0): kernel 0, so a residual adapter starts as the
      identity.
    rule_init_std: stddev of the normal init of the layer's own rule (used when no rule is given).
  """

  features: int
  n: int = 4
  rank: int | None = 1
  zero_init: bool = False
  rule_init_std: float = 0.01

  @nn.compact
  def __call__(self, x, rule=None):
    """x [..., in] -> [..., features]; `rule` [n, n, n] shared, or None for a param of this layer."""
    n, in_features = self.n, x.shape[-1]
    glorot = nn.initializers.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))
    last_init = nn.initializers.zeros if self.zero_init else glorot
    if self.rank is None:
      factors = self.param('factors', last_init, (n, in_features // n, self.features // n))
    else:
      s = self.param('s', glorot, (n, in_features // n, self.rank))  # [n, in/n, rank]
      t = self.param('t', last_init, (n, self.rank, self.features // n))  # [n, rank, out/n]
      factors = s @ t  # [n, in/n, out/n]
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if rule is None:
      rule = self.param('rule', nn.initializers.normal(self.rule_init_std), (n, n, n))
    kernel = kron_sum(rule, factors)  # [in, out]
    return x @ kernel.astype(x.dtype) + bias.astype(x.dtype)


class CompacterAdapter(nn.Module):
  """h + up(act(down(h))) with PHM projections; their rule is `shared['rule']` when `shared_rule`,
  else each projection's own."""

  features: int
  bottleneck: int
  n: int = 4
  rank: int | None = 1
  activation: str = 'gelu'
  shared_rule: bool = True
  rule_init_std: float = 0.01

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True):
    """x [..., features] -> [..., features]."""
    del deterministic
    if self.shared_rule:
      if shared is None:
        raise ValueError('This Compacter adapter shares its rule matrices (shared_rule=True) but was '
                         "called without them: pass shared={'rule': [n, n, n]}.")
      rule = shared['rule']  # [n, n, n]
    else:
      rule = None  # each PHMDense owns one
    dense = dict(n=self.n, rank=self.rank, rule_init_std=self.rule_init_std)
    h = PHMDense(self.bottleneck, **dense, name='down')(x, rule)  # [..., m]
    h = get_activation(self.activation)(h)
    h = PHMDense(self.features, **dense, zero_init=True, name='up')(h, rule)
    return x + h


@dataclasses.dataclass(frozen=True)
class CompacterConfig(MethodConfig):
  """Compacter: Houlsby placement, PHM projections, n=4, rank-1 B_i, shared rule matrices.

  Attributes:
    reduction_factor: bottleneck m = features // reduction_factor (must be divisible by n).
    size: bottleneck m; overrides reduction_factor when set.
    n: number of Kronecker summands (divides the hidden size and m).
    rank: rank of each B_i; None for full [in/n, out/n] matrices (PHM-Adapter).
    activation: nonlinearity.
    shared_rule: one set of rule matrices for every PHM layer of the adapter (Compacter); False:
      each PHM layer (every site's down and up) has its own (PHM-Adapter).
    rule_init_std: stddev of the rule matrices' normal init.
  """

  kind = 'compacter'
  sites: tuple[tuple[str, str], ...] = ((ATTENTION_OUTPUT, 'output'), (FFN_OUTPUT, 'output'))
  reduction_factor: int = 32
  size: int | None = None
  n: int = 4
  rank: int | None = 1
  activation: str = 'gelu'
  shared_rule: bool = True
  rule_init_std: float = 0.01

  def __post_init__(self):
    super().__post_init__()
    get_activation(self.activation)
    if any(placement != 'output' for _, placement in self.sites):
      raise ValueError("Compacter adapters go on a site's output; valid placements: ('output',).")
    if self.n < 1:
      raise ValueError(f'Compacter needs n >= 1 Kronecker summands; got n={self.n}.')
    if self.rank is not None and self.rank < 1:
      raise ValueError(f'Compacter rank={self.rank}: give a rank >= 1 for low-rank B_i, or '
                       'rank=None for full [in/n, out/n] matrices (PHM-Adapter).')

  def bottleneck_size(self, features: int) -> int:
    return int(self.size) if self.size is not None else max(1, features // self.reduction_factor)

  def make_module(self, site: SiteInfo) -> nn.Module:
    m = self.bottleneck_size(site.features)
    if site.features % self.n or m % self.n:
      raise ValueError(f'Compacter needs n={self.n} to divide the width ({site.features} at '
                       f'{site.path}) and the bottleneck ({m}); choose another n or size.')
    return CompacterAdapter(features=site.features, bottleneck=m, n=self.n, rank=self.rank,
                            activation=self.activation, shared_rule=self.shared_rule,
                            rule_init_std=self.rule_init_std)

  def make_shared_module(self, sites=()) -> nn.Module | None:
    return PHMRule(n=self.n, init_std=self.rule_init_std) if self.shared_rule else None


def compacter() -> CompacterConfig:
  """Compacter: after the attention output and the FFN output projections."""
  return CompacterConfig()


def compacter_pp() -> CompacterConfig:
  """Compacter++: one adapter per layer, after the FFN output projection only."""
  return CompacterConfig(sites=((FFN_OUTPUT, 'output'),))


def phm_adapter() -> CompacterConfig:
  """PHM-Adapter: Compacter's placement, n=12, full B_i and a rule of its own in every PHM layer.

  As the authors' `phm_adapters.json` (`hypercomplex_division: 12`, `factorized_phm: false`,
  `shared_phm_rule: false`, glorot-uniform B_i, rules drawn from a normal of stddev 0.01), except
  that the up projection starts at zero, so the adapter starts as the identity. n=12 divides
  T5-base's and BERT-base's 768 and their bottlenecks at reduction factors 32, 16 and 8.
  """
  return CompacterConfig(n=12, rank=None, shared_rule=False)
