"""A run on a Flax NNX model given by an importable constructor: `--config.model=nnx:MODULE:FUNCTION`.

The constructor's contract:

    def make_model(*, vocab_size: int, num_labels: int, rngs: nnx.Rngs, **model_overrides
                   ) -> nnx.Module

  * `vocab_size`: the size of the run's tokenizer (`config.tokenizer`); `num_labels`: the task's
    classes (1 for regression); `rngs`: `nnx.Rngs(config.seed, dropout=config.seed)`, a default
    stream (parameters) and a `dropout` stream; `config.model_overrides` arrive as more keyword
    arguments.
  * The model is called as `model(input_ids, attention_mask, token_type_ids)`, each int32
    [batch, length], and returns logits [batch, num_labels] (regression: [batch, 1]).
  * Its task head is a module named `classifier` (`splicing.sites.HEAD_PARAMS`: it trains beside
    the adapter with `config.train_head`, alone with `method=head`).
  * Dropout layers (`nnx.Dropout(rate, rngs=rngs)`) draw from the `dropout` stream, which each
    training step reseeds with its own key (`nnx.reseed`); they are off in evaluation
    (`model.eval()`). A model that keeps any other RNG stream is refused in training (its draws
    would repeat at every step).

The adapter is spliced with `adapters_jax.nnx.splice.add_adapter`; the method's sites are this
model's paths (`--config.method_options.sites`, e.g. `(('layers/\\d+/attn/(query|value)',
'parallel'),)`), and what trains is `nnx.trainable.trained_filter`'s. The model then runs as
`nnx.functional.Functional` (params tree + apply), so the run is the engine's like any other:
the same step, optimizer partition, checkpoints (adapter leaves and head only), resume, metrics,
`best/` and prediction, vmapped groups too. The base's random init follows `config.seed` (it is
no checkpoint), so a vmapped group's members share one seed and differ in learning rate.
`config.quantize` stores the frozen base quantised as for Linen models
(`train.experiment.quantize_base`, its weights selected as `quantization`'s `'matrices'`).
Classification and regression tasks; no fusion, no `init_adapter_from`.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from adapters_jax import data
from adapters_jax.methods import adapter_drop, get_method
from adapters_jax.models.hf_files import load_tokenizer
from adapters_jax.models.registry import ModelNotFoundError, resolve_checkpoint_dir
from adapters_jax.nnx import splice
from adapters_jax.nnx.functional import Functional
from adapters_jax.nnx.trainable import trained_filter
from adapters_jax.splicing.sites import HEAD_PARAMS
from adapters_jax.task_kinds.choice import kind_factory

NNX_PREFIX = 'nnx:'
# The encoder family's kinds: an NNX model's call is the encoder call with a task head.
ENCODER_FAMILY = 'bert'


@dataclasses.dataclass(frozen=True)
class NnxBase:
  """What an NNX run loads in place of a checkpoint (`Experiment.pretrained`).

  Attributes:
    constructor: the `nnx:MODULE:FUNCTION` it was built by.
    tokenizer: the run's tokenizer (`config.tokenizer`).
  """

  constructor: str
  tokenizer: Any


def is_nnx_model(name: str) -> bool:
  """Whether `config.model` names an NNX constructor (`nnx:MODULE:FUNCTION`)."""
  return name.startswith(NNX_PREFIX)


def load_constructor(name: str) -> Callable[..., nnx.Module]:
  """The function `nnx:MODULE:FUNCTION` names.

  Raises:
    ModelNotFoundError: not of that form, a module that does not import, or no such function in
      it (one line, as for a checkpoint that is not there).
  """
  module_name, _, function = name[len(NNX_PREFIX):].partition(':')
  if not module_name or not function:
    raise ModelNotFoundError(f'config.model={name!r}: an NNX model is nnx:MODULE:FUNCTION, e.g. '
                     'nnx:my_models.encoder:make_model (MODULE importable from here).')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ModelNotFoundError(f'config.model={name!r}: cannot import {module_name!r} ({e}); put '
                             'its folder on PYTHONPATH.') from e
  constructor = getattr(module, function, None)
  if not callable(constructor):
    raise ModelNotFoundError(f'config.model={name!r}: {module_name} has no function '
                             f'{function!r}.')
  return constructor


def _check_config(config: ml_collections.ConfigDict) -> None:
  unsupported = {'dtype': config.dtype != 'float32', 'remat': config.remat,
                 'scan_layers': config.scan_layers, 'init_adapter_from': config.init_adapter_from,
                 'method=fusion': config.method == 'fusion',
                 'frozen_dtype': config.frozen_dtype != 'float32'}
  named = [k for k, v in unsupported.items() if v]
  if named:
    raise ValueError(f'{named} do not apply to an nnx: model; build those choices into its '
                     'constructor, or leave them at their defaults.')
  if config.task_kind not in ('', 'classification', 'regression'):
    raise ValueError(f'task_kind={config.task_kind!r}: an nnx: model trains classification and '
                     'regression tasks; set --config.task_kind=\'\'.')


@dataclasses.dataclass(frozen=True)
class NnxParts:
  """An NNX run's model side, the fields `train.experiment.Experiment` takes.

  Attributes:
    pretrained: the constructor and tokenizer (`NnxBase`).
    task_kind: the run's classification or regression kind.
    spliced: the model, adapter spliced in, as params + apply (`Functional`).
    params: all its params (base, head, adapter), keyed by path parts.
    mask: True on the leaves that train.
  """

  pretrained: NnxBase
  task_kind: Any
  spliced: Functional
  params: Any
  mask: Any


def build_nnx(config: ml_collections.ConfigDict, spec: data.TaskSpec,
              adapter_name: str | None) -> NnxParts:
  """The model `config.model` constructs, with adapter `adapter_name` spliced in (None: a
  baseline, `method=full` or `head`).

  Raises:
    ValueError: a config choice an NNX model does not take, a constructor that cannot be loaded
      or returns no `nnx.Module`, sites or trained-param regexes that match nothing.
  """
  _check_config(config)
  factory = kind_factory(spec, ENCODER_FAMILY, config.task_kind)
  tokenizer = load_tokenizer(resolve_checkpoint_dir(config.tokenizer))
  base = NnxBase(constructor=config.model, tokenizer=tokenizer)
  task_kind = factory.create(spec, base, config)
  num_labels = factory.load_arguments(spec)['num_labels']
  model = load_constructor(config.model)(vocab_size=len(tokenizer), num_labels=num_labels,
                                         rngs=nnx.Rngs(config.seed, dropout=config.seed),
                                         **config.model_overrides)
  if not isinstance(model, nnx.Module):
    raise ValueError(f'config.model={config.model!r} returned a {type(model).__name__}, not an '
                     'nnx.Module.')
  if adapter_name is not None:
    method = adapter_drop(get_method(config.method, **dict(config.method_options)),
                          config.adapter_drop_layers)
    args, _ = task_kind.sample_call()  # (ids, mask, type_ids); the NNX call takes no flags
    splice.add_adapter(model, adapter_name, method, jax.random.PRNGKey(config.seed + 1), *args)
  functional = Functional(model)
  return NnxParts(pretrained=base, task_kind=task_kind, spliced=functional,
                  params=functional.params, mask=_trained_mask(config, model, functional))


def _trained_mask(config: ml_collections.ConfigDict, model: nnx.Module, functional: Functional):
  if config.method == 'full':
    return functional.mask(nnx.Param)
  head = (HEAD_PARAMS,) if config.train_head or config.method == 'head' else ()
  if config.method == 'head':
    mask = functional.mask(lambda path, _: bool(re.fullmatch(HEAD_PARAMS, '/'.join(map(str, path)))))
    if not any(jax.tree.leaves(mask)):
      raise ValueError(f'method=head: the model has no param matching {HEAD_PARAMS!r}; name its '
                       'task head `classifier`.')
    return mask
  return functional.mask(trained_filter(model, extra=head))
