"""VeRA (Kopiczko et al. 2024): LoRA with frozen random projections shared by every site, and two
trained scaling vectors per site.

    y = x W + b + ((dropout(x) A) * d) B * b_vec,    A: [in, r], B: [r, out] frozen random,
                                                      d: [r] (init d_initial), b_vec: [out] (init 0)

as PEFT's `vera` (`lambda_b * F.linear(lambda_d * F.linear(dropout(x), vera_A), vera_B)`, whose
`vera_A` [r, in] and `vera_B` [out, r] are our A.T and B.T). b_vec starts at zero, so the spliced
model starts equal to the base model.

By default A and B are no params: they are regenerated from `projection_seed` (recorded in the
config) every time the adapter runs, so they are neither trained nor stored in checkpoints. Row i
of A and column j of B depend on the seed and on i and j only, so a site with fewer features sees
a slice of the projections a wider site sees (PEFT slices one pair made for the widest site the
same way): every site shares them. Entries are kaiming-uniform as PEFT's,
U(-sqrt(6 / fan_in), sqrt(6 / fan_in)) with fan_in = the site's input features for A and r for B.
(Same formula, not the same random numbers: PEFT draws from torch's generator.)

With `stored_projections=True` (what an imported PEFT save carries: `interop.peft_import`) A and B
are one pair of frozen params of the adapter, `adapters/<name>/shared/projection_a` [N, r] and
`projection_b` [r, M] (N, M: the widest site's input and output features), and a site with `in`
inputs and `out` outputs uses `A[:in]` and `B[:, :out]`, as PEFT slices its `vera_A` / `vera_B`.
They are held in the adapter's checkpoints and never trained (`frozen_leaves`: the trainable rules
freeze them, so they get no gradient and no optimizer state). Spliced afresh they start as PEFT's
do, kaiming-uniform with fan_in N (A) and r (B), drawn from `projection_seed`.

The update folds into the kernel: delta W = A diag(d) B diag(b_vec) [in, out] (`merge`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo, linear_average
from adapters_jax.methods.lora import check_parallel_low_rank
from adapters_jax.nn.dropout import Dropout
from adapters_jax.splicing.sites import QUERY, VALUE
from adapters_jax.splicing.tree import SHARED_KEY

STORED_LEAVES = ('projection_a', 'projection_b')


def vera_projections(seed: int, in_features: int, out_features: int,
                     rank: int) -> tuple[jax.Array, jax.Array]:
  """The frozen shared projections of one site: A [in, r] and B [r, out] (float32).

  A's row i depends only on (seed, i) and B's column j only on (seed, j), so narrower sites get
  slices: jax's counter-based PRNG (`jax_threefry_partitionable`, on by default) draws entry (i, k)
  of an [n, r] array from its flat index i * r + k, whatever n.
  """
  key_a, key_b = jax.random.split(jax.random.key(seed))
  a = jax.random.uniform(key_a, (in_features, rank), jnp.float32, -1.0, 1.0)  # [in, r]
  b = jax.random.uniform(key_b, (out_features, rank), jnp.float32, -1.0, 1.0).T  # [r, out]
  a = a * math.sqrt(6.0 / in_features)
  b = b * math.sqrt(6.0 / rank)
  return jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)


class StoredProjections(nn.Module):
  """The frozen shared projections as params: `projection_a` [N, r], `projection_b` [r, M].

  Attributes:
    in_features: N, the widest site's input features.
    out_features: M, the widest site's output features.
    rank: r.
    projection_seed: what their first values are drawn from (`vera_projections(seed, N, M, r)`).
  """

  in_features: int
  out_features: int
  rank: int
  projection_seed: int

  @nn.compact
  def __call__(self):
    a, b = vera_projections(self.projection_seed, self.in_features, self.out_features, self.rank)
    self.param(STORED_LEAVES[0], lambda _: a)  # [N, r]
    self.param(STORED_LEAVES[1], lambda _: b)  # [r, M]


def site_projections(shared: dict[str, Any] | None, stored: bool, seed: int, in_features: int,
                     out_features: int, rank: int) -> tuple[jax.Array, jax.Array]:
  """A [in, r] and B [r, out] of one site: slices of the stored pair (`shared`), or drawn from
  `seed`."""
  if not stored:
    return vera_projections(seed, in_features, out_features, rank)
  if shared is None or STORED_LEAVES[0] not in shared:
    raise ValueError('This VeRA adapter stores its projections (stored_projections=True) but was '
                     "called without them: pass shared={'projection_a': [N, r], 'projection_b': [r, M]}.")
  a = jax.lax.stop_gradient(shared[STORED_LEAVES[0]][:in_features])
  return a, jax.lax.stop_gradient(shared[STORED_LEAVES[1]][:, :out_features])


class VeRA(nn.Module):
  """The term `((dropout(x) A) * d) B * b` (added to the site's output).

  Attributes:
    out_features: width of the site's output.
    rank: r, the width of the shared projections.
    projection_seed: seed of the frozen projections A and B (`vera_projections`).
    d_initial: initial value of every entry of d.
    dropout: dropout rate on the input of A.
    stored_projections: A and B are slices of `shared` (`StoredProjections`), not drawn from the seed.
  """

  out_features: int
  rank: int = 256
  projection_seed: int = 0
  d_initial: float = 0.1
  dropout: float = 0.0
  stored_projections: bool = False

  @nn.compact
  def __call__(self, x, shared=None, deterministic: bool = True):
    lambda_d = self.param('lambda_d', nn.initializers.constant(self.d_initial), (self.rank,))  # [r]
    lambda_b = self.param('lambda_b', nn.initializers.zeros, (self.out_features,))  # [out]
    a, b = site_projections(shared, self.stored_projections, self.projection_seed, x.shape[-1],
                            self.out_features, self.rank)
    x = Dropout(self.dropout)(x, deterministic=deterministic)
    h = (x @ a.astype(x.dtype)) * lambda_d.astype(x.dtype)  # [..., r]
    return (h @ b.astype(x.dtype)) * lambda_b.astype(x.dtype)  # [..., out]


def vera_delta(adapter_params: dict[str, Any], site: SiteInfo, rank: int, projection_seed: int,
               stored: bool = False) -> jax.Array:
  """The kernel update A diag(d) B diag(b), [in, out]; `adapter_params` holds the stored
  projections under `shared` when `stored`."""
  a, b = site_projections(adapter_params.get(SHARED_KEY), stored, projection_seed, site.in_features,
                          site.out_features, rank)
  return ((a * adapter_params['lambda_d']) @ b) * adapter_params['lambda_b']


@dataclasses.dataclass(frozen=True)
class VeRAConfig(MethodConfig):
  """VeRA on matched dense layers (default: attention query and value, as LoRA).

  Attributes:
    rank: r of the shared projections (PEFT's default 256: VeRA trains r + out numbers per site,
      so a large r costs little).
    projection_seed: seed of the frozen projections (PEFT's `projection_prng_key`).
    d_initial: initial value of d (PEFT's `d_initial`).
    dropout: dropout on the VeRA branch's input.
    stored_projections: A and B are frozen params held in the adapter's checkpoints (PEFT's
      `save_projection` layout: one pair for the widest site, sliced per site) instead of being
      regenerated from `projection_seed`; set by the PEFT import.
  """

  kind = 'vera'
  sites: tuple[tuple[str, str], ...] = ((QUERY, 'parallel'), (VALUE, 'parallel'))
  rank: int = 256
  projection_seed: int = 0
  d_initial: float = 0.1
  dropout: float = 0.0
  stored_projections: bool = False

  def __post_init__(self):
    super().__post_init__()
    check_parallel_low_rank('VeRA', self.sites, self.rank)

  def make_module(self, site: SiteInfo) -> nn.Module:
    return VeRA(out_features=site.out_features, rank=self.rank,
                projection_seed=self.projection_seed, d_initial=self.d_initial,
                dropout=self.dropout, stored_projections=self.stored_projections)

  def make_shared_module(self, sites=()) -> nn.Module | None:
    if not self.stored_projections:
      return None
    if not sites:
      raise ValueError('VeRA with stored_projections=True sizes its projections by the matched sites; '
                       'splice it with add_adapter on a Linen model (or use stored_projections=False).')
    return StoredProjections(in_features=max(s.in_features for s in sites),
                             out_features=max(s.out_features for s in sites), rank=self.rank,
                             projection_seed=self.projection_seed)

  @property
  def frozen_leaves(self) -> tuple[str, ...]:
    return tuple(f'{SHARED_KEY}/{leaf}' for leaf in STORED_LEAVES) if self.stored_projections else ()

  def check_average(self, how):
    if self.stored_projections:
      raise ValueError('Averaging VeRA adapters with stored projections is not possible (each carries '
                       'its own A and B); combine them at apply time with Average(...).')
    if how != 'linear':
      raise ValueError(f"Averaging VeRA adapters how={how!r} is not possible (the output is "
                       "bilinear in d and b); use how='linear' or combine them at apply time with "
                       'Average(...).')

  def average(self, methods, site_params, weights, how):
    self.check_average(how)
    return linear_average(methods, site_params, weights)

  def check_merge(self):
    pass  # folds into the kernel

  def merge(self, host_params, adapter_params, site):
    kernel = host_params['kernel']
    delta = vera_delta(adapter_params, site, self.rank, self.projection_seed, self.stored_projections)
    return {**host_params, 'kernel': kernel + delta.astype(kernel.dtype)}

  def unmerge(self, host_params, adapter_params, site):
    kernel = host_params['kernel']
    delta = vera_delta(adapter_params, site, self.rank, self.projection_seed, self.stored_projections)
    return {**host_params, 'kernel': kernel - delta.astype(kernel.dtype)}


def vera() -> VeRAConfig:
  """Kopiczko et al. 2024 as PEFT's defaults: r=256, d_initial=0.1, on query and value."""
  return VeRAConfig()
