"""From a config to a model ready to train or predict: task kind, base model, spliced adapter, mask.

The run's task kind (`task_kinds.choice`: from the model's family or `config.task_kind`) says how the
base model loads (with a classification head, or with its LM head) and which call discovers the
splice sites; the rest is the same for every kind.

Shared by the training loop and the prediction entry point, so both build exactly the same tree.

Methods: any adapter preset (`houlsby`, `pfeiffer`, `parallel`, `lora`, `ia3`, `compacter`,
`compacter++`, `phm_adapter`); `fusion` (AdapterFusion over the frozen adapters of earlier runs,
`config.method_options.adapter_dirs`; its loss adds `fusion_regularization`); and two baselines
without adapters: `full` (full fine-tuning) and `head` (only the task head trains).

`config.model=nnx:MODULE:FUNCTION` builds a Flax NNX model from an importable constructor
(`train.nnx_model`, which states the constructor's contract) and runs it as params + apply, so
everything after this point is the same for both.

`config.init_adapter_from` names an adapter checkpoint of ours (`save_adapter`, e.g. another run's
`best/`) whose adapter leaves (and the base leaves it trained, such as Houlsby's layer norms; never
its task head) initialise the run's adapter before training.

`config.quantize` (`nf4`, `int4`, `int8`; `config.quantize_block_size` values per block) stores the
frozen kernels quantised (QLoRA, `adapters_jax.quantization`; Linen and `nnx:` models alike):
`forward` dequantises them inside the jitted step, the adapter and whatever else trains stay
float, and the best checkpoint's record keeps the fingerprints of the float base with the
quantisation used (`base_record`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from adapters_jax import data, models, quantization
from adapters_jax.checkpoint.fusion_checkpoint import save_fusion
from adapters_jax.checkpoint.restore import fit_leaves, restore_adapters
from adapters_jax.checkpoint.save import (
  CheckpointError,
  base_record,
  load_leaves,
  load_record,
  make_record,
  save_adapter,
  save_trained,
)
from adapters_jax.methods import PRESETS, adapter_drop, get_method, method_from_dict
from adapters_jax.splicing import trainable
from adapters_jax.splicing.fusion_layers import (
  add_fusion,
  fusion_attentions,
  fusion_regularization,
  fusion_rules,
  plot_fusion_attention,
)
from adapters_jax.splicing.sites import HEAD_PARAMS
from adapters_jax.splicing.splice import Spliced, add_adapter
from adapters_jax.splicing.tree import Params, rename_path
from adapters_jax.task_kinds.choice import kind_factory, model_type_of
from adapters_jax.task_kinds.protocol import TaskKind
from adapters_jax.train.nnx_model import build_nnx, is_nnx_model

BASELINE_METHODS = ('full', 'head')
FUSION_METHOD = 'fusion'
METHODS = tuple(PRESETS) + (FUSION_METHOD,) + BASELINE_METHODS
ATTENTION_PLOT = 'fusion_attention.png'



@dataclasses.dataclass
class Experiment:
  """A built experiment.

  Attributes:
    config: the run's config.
    pretrained: the loaded base model (model, params, tokenizer, identity); for an NNX model its
      constructor and tokenizer (`train.nnx_model.NnxBase`).
    spec: the task spec (labels, metrics, splits).
    task_kind: loss, evaluation outputs and metrics of the task (`task_kinds.protocol`).
    spliced: the host model with the adapter spliced in (no adapter for baselines); for an NNX
      model its `nnx.functional.Functional`, which applies the same way.
    params: all params: base, head and adapter.
    mask: True on the leaves that train.
    adapter_name: the adapter's (or fusion's) name, or None for baselines.
    regularizer: `(full params) -> scalar` added to the task loss in training, or None.
    result_fields: more facts for result.json (e.g. the fused adapters).
    report: `(best params, validation split, workdir) -> result fields` run once after training
      (e.g. fusion's attention plot), or None.
    base_record: a quantised base's checkpoint `base` entry (the float base's fingerprints and
      the quantisation), or None: checkpoints fingerprint `params` themselves.
    frozen_shardings: the shardings of the frozen tree as a run placed it on its mesh, or None:
      `forward` keeps each dequantised kernel split as its codes are
      (`quantization.dequantize_tree`).
  """

  config: ml_collections.ConfigDict
  pretrained: models.Pretrained
  spec: data.TaskSpec
  task_kind: TaskKind
  spliced: Spliced
  params: Params
  mask: Params
  adapter_name: str | None
  regularizer: Callable[[Params], jax.Array] | None = None
  result_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
  report: Callable[[Params, data.BatchSource, str], dict[str, Any]] | None = None
  base_record: dict[str, Any] | None = None
  frozen_shardings: Params | None = None

  def forward(self, params: Params, *args: Any, rng: jax.Array | None = None, **kwargs: Any) -> Any:
    """The spliced model with the run's adapter active; dropout on when `rng` is a key. Quantised
    kernels of `params` are dequantised here, inside whatever jit calls this; quantised `embedding`
    tables reach our Linen backbones as stored (they look their rows up, `quantization.embedding`),
    an NNX model gets every table dequantised whole."""
    rngs = None if rng is None else {'dropout': rng}
    params = quantization.dequantize_tree(params, keep_tables=not is_nnx_model(self.config.model),
                                          shardings=self.frozen_shardings)
    return self.spliced.apply(params, *args, deterministic=rng is None, active=self.adapter_name,
                              rngs=rngs, **kwargs)

  def training_loss(self, params: Params, batch: dict[str, jax.Array], rng: jax.Array) -> jax.Array:
    """The task loss of a batch plus the experiment's regulariser (if any): a scalar."""
    loss = self.task_kind.loss(self.forward, params, batch, rng)
    return loss if self.regularizer is None else loss + self.regularizer(params)

  def logits(self, params: Params, batch: dict[str, jax.Array], *, deterministic: bool,
             rng: jax.Array | None = None) -> jax.Array:
    """The model's output on a batch (classification/regression: the head's [B, num_labels],
    [B, 1] for regression)."""
    return self.forward(params, *self.task_kind.model_inputs(batch),
                        rng=None if deterministic else rng)

  def save_best(self, directory: str, params: Params, extra: dict[str, Any]) -> str:
    """Writes the trained leaves of `params` as an adapter-only checkpoint."""
    base_name, base = self.config.model, self.base_record
    if self.adapter_name is None:
      return save_trained(directory, params, self.mask, base_name=base_name, extra=extra, base=base)
    save = save_fusion if self.config.method == FUSION_METHOD else save_adapter
    return save(directory, self.spliced, params, self.adapter_name, mask=self.mask,
                base_name=base_name, extra=extra, base=base)

  def counts(self) -> trainable.ParamCounts:
    return trainable.count(quantization.logical(self.params), self.mask)


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
  if config.method == FUSION_METHOD:
    return fusion_rules(spliced, adapter_name, train_head=config.train_head)
  return trainable.adapter_rules([spliced.adapter(adapter_name)], train_head=config.train_head)


def build_experiment(config: ml_collections.ConfigDict, spec: data.TaskSpec) -> Experiment:
  """Loads the base model with a head for `spec` and splices the configured adapter into it."""
  if config.method not in METHODS:
    raise ValueError(f'Unknown method {config.method!r}; valid methods: {list(METHODS)}.')
  if config.adapter_drop_layers and config.method in BASELINE_METHODS + (FUSION_METHOD,):
    raise ValueError(f'adapter_drop_layers={tuple(config.adapter_drop_layers)} needs an adapter '
                     f'method, not {config.method!r}.')
  if config.init_adapter_from and config.method in BASELINE_METHODS + (FUSION_METHOD,):
    raise ValueError(f'init_adapter_from={config.init_adapter_from!r} initialises an adapter; '
                     f'method {config.method!r} has none to initialise.')
  if config.quantize and config.method in ('full', FUSION_METHOD):
    raise ValueError(f'quantize={config.quantize!r} stores a frozen base; method '
                     f'{config.method!r} needs a float one: set --config.quantize=\'\'.')
  if is_nnx_model(config.model):
    adapter_name = None if config.method in BASELINE_METHODS else config.adapter_name or spec.name
    parts = build_nnx(config, spec, adapter_name)
    return quantize_base(Experiment(config=config, pretrained=parts.pretrained, spec=spec,
                                    task_kind=parts.task_kind, spliced=parts.spliced,
                                    params=parts.params, mask=parts.mask,
                                    adapter_name=adapter_name))
  factory = kind_factory(spec, model_type_of(config.model), config.task_kind)
  pretrained = models.load_pretrained(
      config.model, **factory.load_arguments(spec), dtype=config.dtype, remat=config.remat,
      scan_layers=config.scan_layers, seed=config.seed,
      config_overrides=dict(config.model_overrides))
  task_kind = factory.create(spec, pretrained, config)
  if config.method == FUSION_METHOD:
    return _build_fusion(config, spec, pretrained, task_kind)
  params = pretrained.params
  spliced = Spliced(pretrained.model)
  adapter_name = None
  if config.method not in BASELINE_METHODS:
    adapter_name = config.adapter_name or spec.name
    method = adapter_drop(get_method(config.method, **dict(config.method_options)),
                          config.adapter_drop_layers).with_tokenizer(pretrained.tokenizer)
    args, kwargs = task_kind.sample_call()
    spliced, params = add_adapter(spliced, params, adapter_name, method,
                                  jax.random.PRNGKey(config.seed + 1), *args, **kwargs)
    if config.init_adapter_from:
      params = init_adapter_from(config.init_adapter_from, spliced, params, adapter_name)
  mask = trainable.make_mask(params, trainable_rules(config, spliced, adapter_name))
  return quantize_base(Experiment(config=config, pretrained=pretrained, spec=spec,
                                  task_kind=task_kind, spliced=spliced, params=params, mask=mask,
                                  adapter_name=adapter_name))


def quantize_base(experiment: Experiment) -> Experiment:
  """The experiment with its frozen kernels stored as `config.quantize` (unchanged when '').

  The float base is dropped (from `pretrained`, or from an NNX model's `Functional`), so only the
  quantised one stays in memory; `base_record` keeps its fingerprints, taken before quantising.
  An NNX model's weights are its frozen leaves of >= 2 dims but biases and norm scales (they
  have no common name: `quantization.frozen_base`'s `'matrices'`); a Linen model's are named
  `kernel` and `embedding`.
  """
  config = experiment.config
  if not config.quantize:
    return experiment
  nnx_model = is_nnx_model(config.model)
  select = 'matrices' if nnx_model else 'named'
  flat_mask = jax.tree_util.tree_leaves_with_path(experiment.mask)
  trained = [jax.tree_util.keystr(p, simple=True, separator='/') for p, m in flat_mask if m]
  if experiment.adapter_name is None:
    float_base = base_record(experiment.params, config.model, trained)
  else:  # as a float run's save records it (PiSSA/OLoRA's residual kernels left unsampled)
    float_base = make_record(experiment.spliced, experiment.params, experiment.adapter_name,
                             config.model, trained)['base']
  record = {**float_base,
            'quantization': quantization.describe(config.quantize, config.quantize_block_size,
                                                  select)}
  params = quantization.quantize_frozen(experiment.params, experiment.mask, config.quantize,
                                        config.quantize_block_size, select)
  if nnx_model:
    return dataclasses.replace(experiment, params=params, base_record=record,
                               spliced=experiment.spliced.without_params())
  return dataclasses.replace(experiment, params=params, base_record=record,
                             pretrained=dataclasses.replace(experiment.pretrained, params=None))


def init_adapter_from(directory: str, spliced: Spliced, params: Params, name: str) -> Params:
  """`params` with adapter `name` initialised from the adapter checkpoint in `directory`.

  The checkpoint's method config must equal the run's; its adapter leaves are renamed to `name`;
  its head is left out (the run's task may have other labels).

  Raises:
    CheckpointError: not an adapter checkpoint, another method config (the differing fields), or
      leaves that do not fit (every missing, unexpected and mis-shaped leaf).
  """
  record = load_record(directory)
  if not record.get('adapter'):
    raise CheckpointError(f'init_adapter_from={directory!r} holds no adapter (a full fine-tuning '
                          'or head-only run); give an adapter checkpoint such as a run\'s best/.')
  want = json.loads(spliced.adapter(name).method.to_json())
  got = record['method']
  differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
  if differ:
    raise CheckpointError(
        f'init_adapter_from={directory!r} holds a {got.get("kind")} adapter whose config differs '
        f'from this run\'s in {differ} (checkpoint: {[got.get(k) for k in differ]}, run: '
        f'{[want.get(k) for k in differ]}); set --config.method/--config.method_options to match.')
  old = record['adapter']
  leaves = {rename_path(p, old, name): v for p, v in load_leaves(directory).items()
            if not re.fullmatch(HEAD_PARAMS, p)}
  return fit_leaves(directory, params, leaves, name,
                    note=' (init_adapter_from: its adapter must match this run\'s sites and sizes)')


def _build_fusion(config: ml_collections.ConfigDict, spec: data.TaskSpec,
                  pretrained: models.Pretrained, task_kind: TaskKind) -> Experiment:
  """The frozen adapters of `method_options.adapter_dirs` (heads dropped), a new fusion over them
  and the base's fresh head; the fusion layers and the head train."""
  options = config.method_options
  for key in ('adapter_dirs', 'temperature', 'dropout', 'regularization'):
    if key not in options:
      raise ValueError(f'method=fusion needs config.method_options.{key} (see '
                       'experiments/configs/mini_fusion.py).')
  if not options.adapter_dirs:
    raise ValueError('config.method_options.adapter_dirs names no adapter checkpoint to fuse; '
                     'give the best/ directories of earlier runs.')
  missing = [d for d in options.adapter_dirs if not os.path.isdir(d)]
  if missing:
    raise ValueError(f'config.method_options.adapter_dirs: no checkpoint at {missing}; train those '
                     'adapters first (experiments.train) or fix the paths.')
  args, kwargs = task_kind.sample_call()
  spliced, params, restored = restore_adapters(list(options.adapter_dirs), pretrained.model,
                                               pretrained.params, *args, **kwargs)
  names = tuple(restored)
  fusion_config = method_from_dict({
      'kind': FUSION_METHOD, 'adapters': names, 'temperature': float(options.temperature),
      'dropout': float(options.dropout), 'regularization': float(options.regularization)})
  spliced, params = add_fusion(spliced, params, names, jax.random.PRNGKey(config.seed + 1),
                               fusion_config)
  name = ','.join(names)
  mask = trainable.make_mask(params, trainable_rules(config, spliced, name))

  def regularizer(full_params: Params) -> jax.Array:
    return fusion_regularization(spliced, full_params, name)

  experiment = Experiment(config=config, pretrained=pretrained, spec=spec,
                          task_kind=task_kind, spliced=spliced, params=params, mask=mask,
                          adapter_name=name, regularizer=regularizer,
                          result_fields={'fused_adapters': list(names)})
  experiment.report = lambda best, dataset, workdir: _attention_report(experiment, best, dataset,
                                                                       workdir)
  return experiment


def _attention_report(experiment: Experiment, params: Params, dataset: data.BatchSource,
                      workdir: str, max_examples: int = 64) -> dict[str, Any]:
  """Mean fusion attention per site over up to `max_examples` validation examples, as a PNG."""
  batch = next(iter(data.eval_batches(dataset.subset(range(min(len(dataset), max_examples))),
                                      max_examples)))
  _, state = experiment.spliced.apply(
      params, *experiment.task_kind.model_inputs(batch), deterministic=True,
      active=experiment.adapter_name, mutable=['intermediates'])
  attentions = fusion_attentions(state['intermediates'], experiment.adapter_name)
  mask = batch['attention_mask'] * batch['example_mask'][:, None]  # [B, L]
  path = plot_fusion_attention(attentions, os.path.join(workdir, ATTENTION_PLOT),
                               adapters=experiment.result_fields['fused_adapters'], mask=mask,
                               title=f'AdapterFusion on {experiment.spec.name}')
  return {'attention_plot': path}
