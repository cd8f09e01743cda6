"""Unions of methods under one adapter name: the MAM adapter and UniPELT (AdapterHub's `ConfigUnion`).

A `UnionConfig` holds member configs whose sites do not overlap (prefix tuning at the attentions'
`keys_values` hooks, a bottleneck at the feed-forward block, LoRA at the query and value
projections). Spliced under one name, every matched site gets the module of the member that
matched it, in that member's own layout (`<site>/adapters/<name>/...`), and the member with a
shared module (prefix tuning's MLP) keeps it at `adapters/<name>/shared/...`. So one site program
per site runs one member's module, the union activates, checkpoints and restores as one adapter,
and `method_from_dict` rebuilds it from `to_dict()` (members recorded as their own dicts).

Presets, with AdapterHub's values:
  * `mam` (He et al. 2022, `MAMConfig`): prefix tuning with a 800-wide MLP (P=30) + a parallel
    bottleneck beside the feed-forward block, reduction factor 2, ReLU, scaled by 4.
  * `unipelt` (Mao et al. 2022, `UniPELTConfig`): prefix tuning P=10, a Pfeiffer bottleneck
    (reduction 16) and LoRA r=8 on query and value, each gated (`nn.gate.InputGate`: a per-site
    sigmoid Linear(features, 1) averaged over positions, read from the member's input; the
    prefix's from the attention's input, which the `keys_values` hook passes on).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.methods.bottleneck import BottleneckConfig, pfeiffer
from adapters_jax.methods.lora import LoRAConfig
from adapters_jax.methods.prefix_tuning import PrefixTuningConfig
from adapters_jax.splicing.sites import FFN_BLOCK


@dataclasses.dataclass(frozen=True)
class UnionConfig(MethodConfig):
  """Several methods spliced as one adapter.

  Attributes:
    members: the member configs (no union among them; none with `leave_out` of its own: set it on
      the union; none that reads or changes its sites' kernels).
    leave_out: blocks that get no member.
    train_also: host parameters trained with the adapter; the members' own are added to it.
  """

  kind = 'union'
  members: tuple[MethodConfig, ...] = ()

  def __post_init__(self):
    super().__post_init__()
    if self.sites:
      raise ValueError('A union takes its sites from its members; set sites on a member.')
    for member in self.members:
      if not isinstance(member, MethodConfig):
        raise ValueError(f'Union members are method configs, got {type(member).__name__}.')
      if isinstance(member, UnionConfig) or member.is_fusion:
        raise ValueError(f'A {member.kind} config cannot be a union member.')
      if member.leave_out:
        raise ValueError(f'Member {member.kind} has leave_out={member.leave_out}; set leave_out '
                         'on the union (it applies to every member).')
      if member.reads_site_params or member.changes_base or member.lengthens_sequence:
        raise ValueError(f'Member {member.kind} reads or changes its sites\' kernels or lengthens '
                         'the sequence; unions take members that only add to their sites.')
    shared = [m.kind for m in self.members if m.make_shared_module.__func__
              is not MethodConfig.make_shared_module]
    if len(shared) > 1:
      raise ValueError(f'At most one union member may have shared params; got {shared}.')
    extra = tuple(p for m in self.members for p in m.train_also if p not in self.train_also)
    object.__setattr__(self, 'train_also', self.train_also + tuple(dict.fromkeys(extra)))

  @property
  def no_site_output(self) -> str:
    return next((m.no_site_output for m in self.members if m.no_site_output), '')

  @property
  def reads_every_position(self) -> bool:
    return any(m.reads_every_position for m in self.members)

  @property
  def missing_site_hint(self) -> str:
    return ' '.join(m.missing_site_hint for m in self.members if m.missing_site_hint)

  def site_rules(self):
    if not self.members:
      raise ValueError('A union needs members, e.g. UnionConfig(members=(prefix_tuning(), '
                       'parallel())), or a preset: mam, unipelt.')
    return tuple(rule for member in self.members for rule in member.site_rules())

  def member_of(self, site: SiteInfo) -> MethodConfig:
    """The member whose rules match `site`; a ValueError when several do."""
    owners = [m for m in self.members
              if any(r.placement == site.placement and re.fullmatch(r.pattern, site.path)
                     for r in m.site_rules())]
    clashing = [m for m in self.members if m not in owners and any(
        re.fullmatch(r.pattern, site.path) for r in m.site_rules())]
    if len(owners) + len(clashing) != 1:
      raise ValueError(f'Union members {[m.kind for m in owners + clashing]} all match site '
                       f'{site.path}; a union\'s members must adapt different sites (splice them '
                       'as separate adapters and Stack them instead).')
    return owners[0]

  def make_module(self, site: SiteInfo) -> nn.Module:
    return self.member_of(site).make_module(site)

  def make_shared_module(self, sites: Sequence[SiteInfo] = ()) -> nn.Module | None:
    for member in self.members:
      own = [s for s in sites if self.member_of(s) is member]
      module = member.make_shared_module(tuple(own)) if own else None
      if module is not None:
        return module
    return None

  def to_dict(self) -> dict[str, Any]:
    return {'kind': self.kind, 'members': [m.to_dict() for m in self.members],
            'sites': list(self.sites), 'leave_out': list(self.leave_out),
            'train_also': list(self.train_also)}


def mam() -> UnionConfig:
  """AdapterHub's `mam`: prefix tuning (MLP width 800) + a parallel FFN adapter, reduction 2,
  ReLU, scaling 4 (its up-projection starts at zero)."""
  adapter = BottleneckConfig(sites=((FFN_BLOCK, 'parallel'),), size=None, reduction_factor=2,
                             activation='relu', scaling=4.0, init='zero')
  return UnionConfig(members=(PrefixTuningConfig(bottleneck_size=800), adapter))


def unipelt() -> UnionConfig:
  """AdapterHub's `unipelt`: a gated prefix P=10, a gated Pfeiffer bottleneck (reduction 16) and
  a gated LoRA r=8 on query and value."""
  return UnionConfig(members=(PrefixTuningConfig(prefix_length=10, use_gating=True),
                              dataclasses.replace(pfeiffer(), use_gating=True),
                              LoRAConfig(rank=8, alpha=2.0, use_gating=True)))
