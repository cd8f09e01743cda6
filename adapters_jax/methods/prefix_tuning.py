"""Prefix tuning (Li & Liang 2021): learned keys and values in front of every attention's own.

At each attention layer (a `keys_values` site: the backbone's `KeyValueHook`,
`adapters_jax.nn.key_value_hook`), P learned key and value vectors per head are prepended to the
layer's keys and values and the mask is opened for them, so every query also attends to the
prefix. Queries and the output length are unchanged; by default so are the positions of real tokens
(the prefix has no position: RoPE and T5's relative buckets see only the real tokens; see
`positions` below); padding stays masked; in cached decoding the cache holds the real tokens and
the prefix is put in front of it at each step.

Two forms, as AdapterHub's `PrefixTuning` / `FlatPrefixTuning` (`prefix_tuning` / `prefix_tuning_flat`):
  * reparameterised (`flat=False`): per location (encoder self-attention, decoder self-attention,
    cross-attention) an embedding of P positions -> Linear(width, bottleneck) -> tanh ->
    Linear(bottleneck, L * 2 * width), width = kv_heads * head_dim. Here the last Linear is split
    by layer: the shared params (`adapters/<name>/shared/<location>/{embedding, hidden}`) hold the
    embedding and the first Linear, each site holds its own columns of the last one
    (`<site>/adapters/<name>/output/{kernel, bias}`, [bottleneck, 2 * width]); AdapterHub's output
    viewed as [P, L * 2, heads, head_dim] has layer l's keys at row 2l and values at 2l + 1, the
    same numbers. `eject_site` folds the MLP into flat prefixes for inference.
  * flat (`flat=True`): each site holds `prefixes` [P, 2 * width] (keys, then values; AdapterHub's
    flat `control_trans` and PEFT's `prefix_projection=False` embedding, sliced by layer).

Gating (`use_gating`, UniPELT; AdapterHub's `PrefixTuningLayer.prefix_gates`): per site a
Linear(hidden, 1) (or 2 with `shared_gating=False`) reads the attention's input on the query side
(the hook's `query_input`, AdapterHub's `residual_input`); gate = mean over its positions (padding
included) of sigmoid(that), one value per example [batch]; the prefix keys are multiplied by
gate[:, 0], the values by gate[:, -1]. In cached decoding the mean runs over the step's own
positions, as in AdapterHub.

Positions (`positions`): with 'none' (AdapterHub's convention) the prefix has no position and the
real tokens keep theirs. With 'after_prefix' the real tokens sit P positions later, as when the
prefix is fed as `past_key_values` (PEFT's PREFIX_TUNING on transformers' models): the method also
adapts the host's `position_ids` site (`adapters_jax.models.position_ids`; placement `output`, no
params) by adding P, which moves BERT's and GPT-2's learned positions and RoPE's angles (the
prefix keys stay unrotated, as cached keys that were never rotated); stacked prefixes add up.
On T5 the site is per stack and carries its relative bias's positions: the real queries and keys
move to P+i and the prefix keys get positions 0..P-1, so real-real distances are unchanged and a
query at P+i sees prefix key j at distance P+i-j (transformers' T5 given the prefix as
past_key_values: PEFT's decoder prefix). The encoder's prefix gets the same (bidirectional)
buckets, the cross-attention (no relative bias) nothing; only stacks with prefixes move.

Initialisation follows AdapterHub: embedding and flat prefixes N(0, 1); Linears U(+-1/sqrt(fan_in));
the gate's kernel N(0, 0.02), its bias U(+-1/sqrt(hidden)).
The prefix is not zero, so the spliced model does not start equal to the base model (as in the
paper); a zero-length prefix (`prefix_length=0`) is the base model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.nn.dropout import Dropout
from adapters_jax.nn.gate import InputGate
from adapters_jax.splicing.sites import (
  CROSS_KEY_VALUES,
  DECODER_KEY_VALUES,
  ENCODER_KEY_VALUES,
  POSITION_IDS,
  SiteRule,
)

POSITIONS = ('none', 'after_prefix')
# The module name of T5's per-stack site on its relative bias's key positions.
T5_KEY_POSITIONS = 'key_positions'


def site_location(path: str) -> str:
  """Which prefix pool a site draws from: `cross_prefix` (cross-attention), `encoder_prefix`
  (self-attention of an encoder) or `self_prefix` (self-attention of a decoder). AdapterHub's
  location keys, except that it calls an encoder-only model's self-attention `self_prefix`."""
  if re.search(r'(^|/)cross_attention/', path):
    return 'cross_prefix'
  if re.search(r'(^|/)encoder/', path):
    return 'encoder_prefix'
  return 'self_prefix'


def _linear_init(fan_in: int):
  """torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernel and bias alike."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class _SharedPrefixMLP(nn.Module):
  """Params `<location>/embedding` and `<location>/hidden/{kernel, bias}` per location."""

  widths: tuple[tuple[str, int], ...]
  prefix_length: int
  bottleneck_size: int

  @nn.compact
  def __call__(self):
    for location, width in self.widths:
      _LocationMLP(width, self.prefix_length, self.bottleneck_size, name=location)()


class _LocationMLP(nn.Module):
  width: int
  prefix_length: int
  bottleneck_size: int

  @nn.compact
  def __call__(self):
    self.param('embedding', nn.initializers.normal(1.0), (self.prefix_length, self.width))
    nn.Dense(self.bottleneck_size, kernel_init=_linear_init(self.width),
             bias_init=_linear_init(self.width), name='hidden')(jnp.zeros((1, self.width)))


def prefix_hidden(shared_location: dict[str, Any]) -> jax.Array:
  """tanh(embedding @ W1 + b1): the MLP's hidden layer of one location, [P, bottleneck] float32."""
  hidden = shared_location['hidden']
  return jnp.tanh(shared_location['embedding'] @ hidden['kernel'] + hidden['bias'])


class PositionShift(nn.Module):
  """`positions` `[batch, seq]` int -> `positions + offset`: the real tokens after a prefix of
  `offset` positions."""

  offset: int

  @nn.compact
  def __call__(self, positions, shared=None, deterministic: bool = True):
    del shared, deterministic  # no params, no randomness
    return positions + jnp.asarray(self.offset, positions.dtype)


class PrefixKeyPositions(nn.Module):
  """T5's relative-bias key positions `[..., k_len]` int -> `[0 .. offset - 1] ++ (positions +
  offset)` `[..., offset + k_len]`: the prefix keys (put in front of the real ones by the
  attentions' hooks) at 0..offset-1, the real keys `offset` places on (the stack moves its
  queries as far), as transformers' T5 places `past_key_values`."""

  offset: int

  @nn.compact
  def __call__(self, positions, shared=None, deterministic: bool = True):
    del shared, deterministic  # no params, no randomness
    front = jnp.broadcast_to(jnp.arange(self.offset, dtype=positions.dtype),
                             positions.shape[:-1] + (self.offset,))
    return jnp.concatenate([front, positions + jnp.asarray(self.offset, positions.dtype)], axis=-1)


class KeyValuePrefix(nn.Module):
  """One attention layer's prefix: `(key, value, mask, query_input)` -> the same with P keys and
  values in front (the mask opened for them; `query_input` passed on unchanged).

  Attributes:
    prefix_length: P.
    flat: True: the prefixes are this module's `prefixes` param [P, 2 * width]; False: the
      reparameterised form, this module's `output` Linear applied to the location's shared hidden
      layer.
    location: the shared pool (`site_location`) for the reparameterised form.
    bottleneck_size: fan-in of `output` (for its init).
    dropout: dropout rate on the prefix keys and values (AdapterHub's).
    use_gating: scale the prefix keys and values by a per-example gate read from `query_input`
      (UniPELT, see the module docstring); params `gate/gate/{kernel, bias}`.
    shared_gating: one gate for keys and values (True) or one each (False).
  """

  prefix_length: int
  flat: bool
  location: str
  bottleneck_size: int = 512
  dropout: float = 0.0
  use_gating: bool = False
  shared_gating: bool = True

  @nn.compact
  def __call__(self, kv, shared=None, deterministic: bool = True):
    """`kv` = (key, value, mask, query_input): key/value `[batch, k_len, kv_heads, head_dim]`, mask
    bool broadcastable to `[batch, heads, q_len, k_len]` or None, query_input `[batch, q_len,
    hidden]`. Returns them with k_len + P keys."""
    key, value, mask, query_input = kv
    batch, _, heads, dim = key.shape
    width = heads * dim
    if self.flat:
      prefixes = self.param('prefixes', nn.initializers.normal(1.0),
                            (self.prefix_length, 2 * width))  # [P, 2 * width]
    else:
      if shared is None or self.location not in shared:
        raise ValueError(f'The reparameterised prefix of location {self.location!r} needs the '
                         'shared params adapters/<name>/shared/' f'{self.location}; were these '
                         'params made by add_adapter?')
      hidden = prefix_hidden(shared[self.location])  # [P, bottleneck]
      prefixes = nn.Dense(2 * width, kernel_init=_linear_init(self.bottleneck_size),
                          bias_init=_linear_init(self.bottleneck_size), name='output')(hidden)
    prefixes = prefixes.reshape(self.prefix_length, 2, heads, dim)
    prefixes = Dropout(self.dropout)(prefixes, deterministic=deterministic)
    prefix_keys = jnp.broadcast_to(prefixes[:, 0], (batch, self.prefix_length, heads, dim))
    prefix_values = jnp.broadcast_to(prefixes[:, 1], (batch, self.prefix_length, heads, dim))
    if self.use_gating:
      gate = InputGate(outputs=1 if self.shared_gating else 2,
                       bias_init=_linear_init(query_input.shape[-1]),
                       name='gate')(query_input.astype(jnp.float32))  # [batch, 1, 1 or 2]
      prefix_keys = prefix_keys * gate[:, :, None, :1]  # [batch, P, heads, dim] * [batch, 1, 1, 1]
      prefix_values = prefix_values * gate[:, :, None, -1:]
    key = jnp.concatenate([prefix_keys.astype(key.dtype), key], axis=1)
    value = jnp.concatenate([prefix_values.astype(value.dtype), value], axis=1)
    if mask is not None:  # every query sees the whole prefix
      mask = jnp.concatenate([jnp.ones(mask.shape[:-1] + (self.prefix_length,), bool),
                              mask.astype(bool)], axis=-1)
    return key, value, mask, query_input


@dataclasses.dataclass(frozen=True)
class PrefixTuningConfig(MethodConfig):
  """Prefix tuning at every attention layer's keys and values.

  Attributes:
    prefix_length: P, the number of prefix positions (AdapterHub's default 30).
    flat: train the prefixes directly (True) or through the MLP (False, the paper's form).
    bottleneck_size: hidden width of the MLP (flat=False).
    dropout: dropout on the prefix keys and values.
    use_gating: multiply each site's prefix keys and values by UniPELT's gate, read from the
      attention's input (AdapterHub's `use_gating`; see the module docstring).
    shared_gating: one gate for keys and values (AdapterHub's default) or one each.
    encoder_prefix: prefixes in an encoder's self-attention (BERT/RoBERTa, T5's encoder).
    self_prefix: prefixes in a decoder's self-attention (T5's decoder, GPT-2, Llama-family).
    cross_prefix: prefixes in T5's cross-attention.
    positions: 'none' (the prefix has no position, real tokens keep theirs: AdapterHub's) or
      'after_prefix' (real tokens' positions + P, PEFT's PREFIX_TUNING; needs the host's
      `position_ids` site: our BERT/RoBERTa, decoders and T5, where the prefix keys get relative
      positions 0..P-1).
    sites: by default made from the three switches; set it to name other `keys_values` sites.
  """

  kind = 'prefix_tuning'
  no_site_output = ('a prefix adapter extends the attention\'s keys and values; it has no output '
                    'at a site to average or fuse. Stack prefix adapters (their prefixes are '
                    'concatenated), pick one per example (PerExample) or run one alone')
  prefix_length: int = 30
  flat: bool = False
  bottleneck_size: int = 512
  dropout: float = 0.0
  use_gating: bool = False
  shared_gating: bool = True
  encoder_prefix: bool = True
  self_prefix: bool = True
  cross_prefix: bool = True
  positions: str = 'none'

  def __post_init__(self):
    super().__post_init__()
    if self.prefix_length < 0:
      raise ValueError(f'prefix_length must be >= 0, got {self.prefix_length}.')
    if not self.sites and not (self.encoder_prefix or self.self_prefix or self.cross_prefix):
      raise ValueError('Prefix tuning with encoder_prefix, self_prefix and cross_prefix all False '
                       'has no site; enable at least one.')
    if self.positions not in POSITIONS:
      raise ValueError(f'positions must be one of {POSITIONS}, got {self.positions!r}.')
    for site in self._key_value_rules():
      if site.placement != 'keys_values':
        raise ValueError(f'Prefix tuning extends keys and values: its sites take placement '
                         f"'keys_values', got {site.placement!r} for {site.pattern!r}.")

  def _key_value_rules(self) -> tuple[SiteRule, ...]:
    """The attention hooks the prefixes go to (without the position-ids site)."""
    if self.sites:
      return tuple(r for r in super().site_rules() if r.pattern != POSITION_IDS)
    chosen = [pattern for pattern, on in ((ENCODER_KEY_VALUES, self.encoder_prefix),
                                          (DECODER_KEY_VALUES, self.self_prefix),
                                          (CROSS_KEY_VALUES, self.cross_prefix)) if on]
    # One rule, so a model without one of the locations (BERT has no decoder) is not an error.
    return (SiteRule('|'.join(chosen), 'keys_values'),)

  def site_rules(self):
    if self.positions == 'none':
      return self._key_value_rules()
    # T5's key-positions site is per stack: only a stack with prefixes may grow its bias by P keys
    # (its attentions' keys grow by P); cross-attention has no positions.
    stacks = [stack for stack, on in (('encoder', self.encoder_prefix), ('decoder', self.self_prefix))
              if on or self.sites]
    pattern = POSITION_IDS + (rf'|(.*/)?({"|".join(stacks)})/{T5_KEY_POSITIONS}' if stacks else '')
    return self._key_value_rules() + (SiteRule(pattern, 'output'),)

  def make_module(self, site: SiteInfo) -> nn.Module:
    if site.placement != 'keys_values':  # the host's position ids (positions='after_prefix')
      if site.path.rsplit('/', 1)[-1] == T5_KEY_POSITIONS:
        return PrefixKeyPositions(offset=self.prefix_length)
      return PositionShift(offset=self.prefix_length)
    return KeyValuePrefix(prefix_length=self.prefix_length, flat=self.flat,
                          location=site_location(site.path), bottleneck_size=self.bottleneck_size,
                          dropout=self.dropout, use_gating=self.use_gating,
                          shared_gating=self.shared_gating)

  def make_shared_module(self, sites: Sequence[SiteInfo] = ()) -> nn.Module | None:
    if self.flat:
      return None
    if not sites:
      raise ValueError('The reparameterised prefix (flat=False) needs the matched sites to size '
                       'its shared MLP; splice it with adapters_jax.splicing.splice.add_adapter.')
    widths: dict[str, int] = {}
    for site in key_value_sites(sites):
      location = site_location(site.path)
      if widths.setdefault(location, site.in_features) != site.in_features:
        raise ValueError(f'The {location} sites have keys of different widths ({widths[location]} '
                         f'and {site.in_features} at {site.path}); one shared MLP cannot serve '
                         'them: use flat=True.')
    return _SharedPrefixMLP(widths=tuple(widths.items()), prefix_length=self.prefix_length,
                            bottleneck_size=self.bottleneck_size)

  def eject_site(self, shared: dict[str, Any] | None, site_params: dict[str, Any],
                 site: SiteInfo) -> dict[str, Any]:
    """The flat `prefixes` [P, 2 * width] a reparameterised site computes (its MLP folded); a
    gate is kept as it is."""
    if self.flat or site.placement != 'keys_values':
      return dict(site_params)
    hidden = prefix_hidden(shared[site_location(site.path)])  # [P, bottleneck]
    output = site_params['output']
    gate = {'gate': site_params['gate']} if 'gate' in site_params else {}
    return {'prefixes': hidden @ output['kernel'] + output['bias'], **gate}

  def ejected(self) -> PrefixTuningConfig:
    """The config of `eject_site`'s params: the flat form."""
    return dataclasses.replace(self, flat=True)


def key_value_sites(sites: Sequence[SiteInfo]) -> list[SiteInfo]:
  """The sites that hold prefixes (not the position-ids site of `positions='after_prefix'`)."""
  return [site for site in sites if site.placement == 'keys_values']


def prefix_tuning() -> PrefixTuningConfig:
  """Li & Liang 2021 as AdapterHub's `prefix_tuning`: P=30, MLP of 512 with tanh."""
  return PrefixTuningConfig()


def prefix_tuning_flat() -> PrefixTuningConfig:
  """AdapterHub's `prefix_tuning_flat`: P=30 prefixes trained directly."""
  return PrefixTuningConfig(flat=True)

