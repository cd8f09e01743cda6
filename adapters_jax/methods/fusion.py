"""AdapterFusion (Pfeiffer et al. 2021): attention over the outputs of frozen task adapters.

At every site the fused adapters share, with `y` the site's output (before any adapter) and
`h_1..h_K` the adapters' bottleneck outputs (their `up` projection, before the residual):

    q = y Q,   k_i = h_i K,   v_i = h_i V,      a = softmax(q . k_i / T over i)
    y <- y + sum_i a_i v_i

V starts at the identity (plus tiny noise), so with one adapter the fusion starts equal to it.
Training usually pulls V towards the identity with `regularization * ||V - I||^2`
(`adapters_jax.splicing.fusion_layers.fusion_regularization`). The attention weights `a` [..., K]
are sown into the `intermediates` collection (`attention`).

Like adapter-hub, fusion combines bottleneck adapters (Houlsby, Pfeiffer, parallel) only: their
outputs live in the site's output space, so attention over them is meaningful.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.nn.dropout import Dropout

ATTENTION = 'attention'


def fusion_attention_key(name: str) -> str:
  """The `intermediates` entry (at each site path) holding fusion `name`'s attention weights."""
  return f'fusion_attention[{name}]'


def identity_plus_noise(noise: float):
  """Initialiser of a square kernel: the identity plus N(0, noise^2) entries."""
  def init(key, shape, dtype=jnp.float32):
    if len(shape) != 2 or shape[0] != shape[1]:
      raise ValueError(f'The fusion value kernel must be square, got shape {shape}.')
    eye = jnp.eye(shape[0], dtype=dtype)
    return eye + noise * jax.random.normal(key, shape, dtype)
  return init


class AdapterFusion(nn.Module):
  """One fusion layer (one site).

  Attributes:
    features: width of the site's output (= of every adapter output).
    query, key, value: learn the projection (else the identity is used).
    temperature: softmax temperature T (> 0); 1 is plain softmax.
    dropout: dropout rate on the attention scores (adapter-hub: the model's attention dropout).
    value_init_noise: std of the noise added to the identity-initialised value kernel.
  """

  features: int
  query: bool = True
  key: bool = True
  value: bool = True
  temperature: float = 1.0
  dropout: float = 0.1
  value_init_noise: float = 1e-6

  @nn.compact
  def __call__(self, query, deltas, deterministic: bool = True):
    """query: [..., F] site output; deltas: [..., K, F] adapter outputs. Returns [..., F]."""
    init = nn.initializers.normal(0.02)
    q = nn.Dense(self.features, kernel_init=init, name='query')(query) if self.query else query
    k = nn.Dense(self.features, kernel_init=init, name='key')(deltas) if self.key else deltas
    v = deltas
    if self.value:
      v = nn.Dense(self.features, use_bias=False, name='value',
                   kernel_init=identity_plus_noise(self.value_init_noise))(deltas)  # [..., K, F]
    scores = jnp.einsum('...f,...kf->...k', q, k).astype(jnp.float32)  # [..., K]
    scores = Dropout(self.dropout)(scores, deterministic=deterministic)
    probs = jax.nn.softmax(scores / self.temperature, axis=-1)  # [..., K]
    self.sow('intermediates', ATTENTION, probs)
    mixed = jnp.einsum('...k,...kf->...f', probs.astype(v.dtype), v)  # [..., F]
    return query + mixed.astype(query.dtype)


@dataclasses.dataclass(frozen=True)
class FusionConfig(MethodConfig):
  """AdapterFusion over named adapters; splice with `adapters_jax.splicing.fusion_layers.add_fusion`.

  Its sites are those of the fused adapters (no patterns of its own). Defaults follow adapter-hub's
  `DynamicAdapterFusionConfig` (query, key, value learned; value initialised to the identity;
  regularisation 0.01), with a fixed softmax temperature instead of its annealed one.

  Attributes:
    adapters: the fused adapters' names, in order.
    query, key, value: learn these projections.
    temperature: softmax temperature (> 0).
    dropout: dropout on the attention scores.
    value_init_noise: std of the noise on the identity value kernel.
    regularization: weight of `||V - I||^2` (summed over sites) in the training loss; 0 disables.
  """

  kind = 'fusion'
  is_fusion = True
  adapters: tuple[str, ...] = ()
  query: bool = True
  key: bool = True
  value: bool = True
  temperature: float = 1.0
  dropout: float = 0.1
  value_init_noise: float = 1e-6
  regularization: float = 0.01

  def __post_init__(self):
    super().__post_init__()
    if self.sites:
      raise ValueError('A fusion has no site patterns of its own: it sits at the sites of the '
                       'adapters it fuses; leave `sites` empty.')
    if len(set(self.adapters)) != len(self.adapters):
      raise ValueError(f'Fused adapter names repeat: {self.adapters}.')
    if not self.temperature > 0:
      raise ValueError(f'The fusion temperature must be > 0, got {self.temperature}.')
    if self.regularization < 0:
      raise ValueError(f'regularization must be >= 0, got {self.regularization}.')
    if self.regularization > 0 and not self.value:
      raise ValueError('regularization pulls the value matrix towards the identity; with '
                       'value=False there is none: set regularization=0.0.')

  def make_module(self, site: SiteInfo) -> nn.Module:
    return AdapterFusion(features=site.out_features, query=self.query, key=self.key,
                         value=self.value, temperature=self.temperature, dropout=self.dropout,
                         value_init_noise=self.value_init_noise)


def fusion(*adapters: str, **options) -> FusionConfig:
  """A fusion config over `adapters` with adapter-hub's dynamic defaults (see `FusionConfig`)."""
  return FusionConfig(adapters=tuple(adapters), **options)
