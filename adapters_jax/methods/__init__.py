"""Adapter methods: one file per method (module + frozen config), and the named presets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters_jax.methods.base import MethodConfig, SiteInfo, adapter_drop, replace_fields
from adapters_jax.methods.bottleneck import (
  Bottleneck,
  BottleneckConfig,
  double_seq_bn,
  houlsby,
  parallel,
  pfeiffer,
)
from adapters_jax.methods.compacter import (
  CompacterAdapter,
  CompacterConfig,
  PHMDense,
  PHMRule,
  compacter,
  compacter_pp,
  kron_sum,
  phm_adapter,
)
from adapters_jax.methods.dora import DoRA, DoRAConfig, dora
from adapters_jax.methods.fusion import AdapterFusion, FusionConfig, fusion
from adapters_jax.methods.ia3 import IA3, IA3Config, ia3
from adapters_jax.methods.lora import LoRA, LoRAConfig, lora
from adapters_jax.methods.prefix_tuning import (
  KeyValuePrefix,
  PrefixTuningConfig,
  prefix_tuning,
  prefix_tuning_flat,
)
from adapters_jax.methods.prompt_tuning import (
  PromptTuning,
  PromptTuningConfig,
  prompt_tuning,
)
from adapters_jax.methods.union import UnionConfig, mam, unipelt
from adapters_jax.methods.vera import VeRA, VeRAConfig, vera

PRESETS: dict[str, Callable[[], MethodConfig]] = {
    'houlsby': houlsby,
    'double_seq_bn': double_seq_bn,
    'pfeiffer': pfeiffer,
    'parallel': parallel,
    'lora': lora,
    'vera': vera,
    'dora': dora,
    'ia3': ia3,
    'compacter': compacter,
    'compacter++': compacter_pp,
    'phm_adapter': phm_adapter,
    'prefix_tuning': prefix_tuning,
    'prefix_tuning_flat': prefix_tuning_flat,
    'prompt_tuning': prompt_tuning,
    'mam': mam,
    'unipelt': unipelt,
}

CONFIG_KINDS: dict[str, type[MethodConfig]] = {
    cls.kind: cls for cls in (BottleneckConfig, LoRAConfig, VeRAConfig, DoRAConfig,
                              IA3Config, CompacterConfig, FusionConfig, PrefixTuningConfig,
                              PromptTuningConfig, UnionConfig)
}


def get_method(name: str, **overrides: Any) -> MethodConfig:
  """A preset by name, with fields overridden.

  Example:
    >>> get_method('houlsby', size=8).size
    8

  Raises:
    ValueError: unknown preset or option; the message lists the valid ones.
  """
  if name not in PRESETS:
    raise ValueError(f'Unknown adapter preset {name!r}; valid presets: {sorted(PRESETS)}.')
  return replace_fields(PRESETS[name](), **overrides)


def method_from_dict(record: dict[str, Any]) -> MethodConfig:
  """Rebuilds a method config from `MethodConfig.to_dict()` output (e.g. a checkpoint's JSON)."""
  record = dict(record)
  kind = record.pop('kind', None)
  if kind not in CONFIG_KINDS:
    raise ValueError(f'Unknown adapter method kind {kind!r}; valid kinds: {sorted(CONFIG_KINDS)}.')
  if kind == UnionConfig.kind:  # its members are recorded as their own dicts
    record['members'] = tuple(method_from_dict(m) for m in record.get('members', ()))
  return replace_fields(CONFIG_KINDS[kind](), **record)


__all__ = [
    'adapter_drop', 'AdapterFusion', 'Bottleneck', 'BottleneckConfig', 'compacter', 'compacter_pp',
    'CompacterAdapter', 'CompacterConfig', 'CONFIG_KINDS', 'DoRA', 'dora', 'DoRAConfig', 'double_seq_bn',
    'fusion', 'FusionConfig', 'get_method', 'houlsby', 'IA3', 'ia3', 'IA3Config', 'KeyValuePrefix',
    'kron_sum', 'lora', 'LoRA', 'LoRAConfig', 'mam', 'method_from_dict', 'MethodConfig', 'parallel',
    'pfeiffer',
    'phm_adapter', 'PHMDense', 'PHMRule', 'prefix_tuning', 'prefix_tuning_flat', 'PrefixTuningConfig',
    'PRESETS', 'prompt_tuning', 'PromptTuning', 'PromptTuningConfig', 'replace_fields', 'SiteInfo',
    'unipelt', 'UnionConfig', 'VeRA', 'vera', 'VeRAConfig',
]
