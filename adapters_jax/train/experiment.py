"""From a config to a model ready to train or predict: base model, task head, spliced adapter, mask.

Shared by the training loop and the prediction entry point, so both build exactly the same tree.

Methods: any adapter preset (`houlsby`, `pfeiffer`, `parallel`, `lora`, `ia3`, `compacter`,
`compacter++`), plus two baselines without adapters: `full` (full fine-tuning) and `head` (only the
task head trains).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from adapters_jax import data, models, trainable
from adapters_jax.methods import PRESETS, adapter_drop, get_method
from adapters_jax.sites import HEAD_PARAMS
from adapters_jax.splice import Spliced, add_adapter

BASELINE_METHODS = ('full', 'head')
METHODS = tuple(PRESETS) + BASELINE_METHODS

Params = dict[str, Any]


@dataclasses.dataclass
class Experiment:
  """A built experiment.

  Attributes:
    config: the run's config.
    pretrained: the loaded base model (model, params, tokenizer, identity).
    spec: the task spec (labels, metrics, splits).
    spliced: the host model with the adapter spliced in (no adapter for baselines).
    params: all params: base, head and adapter.
    mask: True on the leaves that train.
    adapter_name: the adapter's name, or None for baselines.
  """

  config: ml_collections.ConfigDict
  pretrained: models.Pretrained
  spec: data.TaskSpec
  spliced: Spliced
  params: Params
  mask: Params
  adapter_name: str | None

  def logits(self, params: Params, batch: dict[str, jax.Array], *, deterministic: bool,
             rng: jax.Array | None = None) -> jax.Array:
    """Model output for a batch: [B, num_labels] float32 ([B, 1] for regression)."""
    rngs = None if deterministic else {'dropout': rng}
    return self.spliced.apply(params, batch['input_ids'], batch['attention_mask'],
                              batch['token_type_ids'], deterministic=deterministic,
                              active=self.adapter_name, rngs=rngs)

  def counts(self) -> trainable.ParamCounts:
    return trainable.count(self.params, self.mask)


def task_source(config: ml_collections.ConfigDict) -> str | data.LocalTaskConfig:
  """The argument of `data.load_task` the config names: a task name or a local-file task."""
  if config.task != 'local':
    return config.task
  return data.local_task_config(config.local_task)


def trainable_rules(config: ml_collections.ConfigDict, spliced: Spliced,
                    adapter_name: str | None) -> list[tuple[str, bool]]:
  if config.method == 'full':
    return [(r'.*', True)]
  if config.method == 'head':
    return [(HEAD_PARAMS, True), (r'.*', False)]
  return trainable.adapter_rules([spliced.adapter(adapter_name)], train_head=config.train_head)


def build_experiment(config: ml_collections.ConfigDict, spec: data.TaskSpec) -> Experiment:
  """Loads the base model with a head for `spec` and splices the configured adapter into it."""
  if config.method not in METHODS:
    raise ValueError(f'Unknown method {config.method!r}; valid methods: {list(METHODS)}.')
  if config.adapter_drop_layers and config.method in BASELINE_METHODS:
    raise ValueError(f'adapter_drop_layers={tuple(config.adapter_drop_layers)} needs an adapter '
                     f'method, not {config.method!r}.')
  pretrained = models.load_pretrained(
      config.model, head='classification', num_labels=spec.num_labels, dtype=config.dtype,
      remat=config.remat, scan_layers=config.scan_layers, seed=config.seed,
      config_overrides=dict(config.model_overrides))
  params = pretrained.params
  spliced = Spliced(pretrained.model)
  adapter_name = None
  if config.method not in BASELINE_METHODS:
    adapter_name = config.adapter_name or spec.name
    method = adapter_drop(get_method(config.method, **dict(config.method_options)),
                          config.adapter_drop_layers)
    sample = jnp.ones((2, 16), jnp.int32)
    spliced, params = add_adapter(spliced, params, adapter_name, method,
                                  jax.random.PRNGKey(config.seed + 1), sample, sample,
                                  jnp.zeros_like(sample), deterministic=True)
  mask = trainable.make_mask(params, trainable_rules(config, spliced, adapter_name))
  return Experiment(config=config, pretrained=pretrained, spec=spec, spliced=spliced,
                    params=params, mask=mask, adapter_name=adapter_name)
