"""Several adapters over one base: label each input with a chosen adapter, or each with its own,
in one forward pass per batch (`composition.PerExample`).

Built from the same pieces as a run: the base as `build_experiment` builds it (without an adapter),
every workdir's best adapter restored onto it (`checkpoint.restore.restore_adapters`), and
`data.eval_batches` (padding rows with `example_mask` 0). The adapters share the encoder; each
keeps its own task head and labels, applied to the encoder's head input ([batch, hidden]) of its
rows, and its kind presents the rows (`label` + `probabilities`, or `score`), with `adapter`.

Example:
  server = load_adapter_server(['workdirs/rt', 'workdirs/tweets'])
  server.predict(['Great film.', 'Self-driving cars scare me.'],
                 adapters=['rotten_tomatoes', 'tweet_sentiment'])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from adapters_jax import data
from adapters_jax.checkpoint.restore import restore_adapters
from adapters_jax.predict.runs import read_run
from adapters_jax.splicing import composition
from adapters_jax.splicing.splice import Spliced
from adapters_jax.splicing.tree import Params
from adapters_jax.task_kinds.choice import KINDS, kind_name, model_type_of
from adapters_jax.task_kinds.inputs import Text, unlabelled_examples
from adapters_jax.task_kinds.protocol import EXAMPLE_MASK
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.nnx_model import is_nnx_model

ENCODER_KINDS = ('classification', 'regression')  # the kinds whose adapters share a base here
ADAPTER_INDEX = 'adapter_index'  # batch key: int32 [B], each row's adapter (`PerExample` order)


def head_features(module, input_ids, attention_mask, token_type_ids):
  """The classification model's head input [batch, hidden] (pooled, or the first token)."""
  return module.head_features(input_ids, attention_mask, token_type_ids, deterministic=True)


@dataclasses.dataclass(frozen=True)
class AdapterHead:
  """One adapter's task: its kind (`Classification` or `Regression`), its run's `max_length`,
  and its head (the host module sized for its labels, and the head's params)."""

  kind: Any
  max_length: int
  module: Any
  params: Params


@dataclasses.dataclass
class AdapterServer:
  """Task adapters over one base; see the module docstring.

  Attributes:
    spliced: the base with every adapter spliced in.
    params: the base params with every adapter's leaves restored.
    heads: adapter name -> its `AdapterHead`.
    tokenizer: the base's tokenizer.
    batch_size: rows per forward pass.
  """

  spliced: Spliced
  params: Params
  heads: dict[str, AdapterHead]
  tokenizer: Any
  batch_size: int = 64

  def __post_init__(self):
    self.names = tuple(self.heads)
    self.branches = composition.PerExample(*self.names)
    spliced, branches = self.spliced, self.branches

    def mixed(params, ids, mask, types, index):
      return spliced.apply(params, ids, mask, types, method=head_features, active=branches,
                           adapter_index=index)

    def single(params, ids, mask, types, name):
      return spliced.apply(params, ids, mask, types, method=head_features, active=name)

    self._mixed = jax.jit(mixed)
    self._single = jax.jit(single, static_argnums=(4,))

  def head_logits(self, name: str, features: np.ndarray) -> np.ndarray:
    """Adapter `name`'s head on head inputs [N, hidden] -> [N, num_labels] ([N, 1] regression)."""
    head = self.heads[name]

    def classify(module, x):
      return module.classifier(x, deterministic=True)

    return np.asarray(head.module.apply({'params': {'classifier': head.params}}, features,
                                        method=classify))

  def features(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Head inputs [B, hidden] of a batch, each row through its adapter (`ADAPTER_INDEX`); one
    adapter's call when every row has the same."""
    ids, mask, types = batch['input_ids'], batch['attention_mask'], batch['token_type_ids']
    index = batch[ADAPTER_INDEX]
    if np.all(index == index[0]):
      return np.asarray(self._single(self.params, ids, mask, types, self.names[int(index[0])]))
    return np.asarray(self._mixed(self.params, ids, mask, types, index))

  def predict(self, texts: Sequence[Text], adapter: str | None = None,
              adapters: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Labels texts with one adapter (`adapter`) or each with its own (`adapters`, one per text).

    Returns:
      Per input: `adapter`, and `label` + `probabilities` (classification) or `score`.

    Raises:
      ValueError: both or neither of `adapter`/`adapters`, a count that differs from the texts',
        an unknown adapter (with the loaded ones), or an input of the wrong arity for its adapter.
    """
    if (adapter is None) == (adapters is None):
      raise ValueError('Give either adapter= (one for all texts) or adapters= (one per text).')
    per_row = [adapter] * len(texts) if adapters is None else list(adapters)
    if len(per_row) != len(texts):
      raise ValueError(f'{len(per_row)} adapter names for {len(texts)} texts; give one per text.')
    unknown = sorted({n for n in per_row if n not in self.heads}, key=str)
    if unknown:
      raise ValueError(f'Unknown adapter(s) {unknown}; loaded adapters: {list(self.names)}.')
    for i, (text, name) in enumerate(zip(texts, per_row, strict=True)):
      spec = self.heads[name].kind.spec
      if (not isinstance(text, str)) != spec.is_pair:
        raise ValueError(f'Input {i + 1}: adapter {name!r} (task {spec.name!r}) takes '
                         f'{"text pairs" if spec.is_pair else "one text"}.')
    if not texts:
      return []
    features = []
    for batch in data.eval_batches(self._dataset(texts, per_row), self.batch_size):
      features.append(self.features(batch)[batch[EXAMPLE_MASK] > 0])
    features = np.concatenate(features)  # [N, hidden], input order
    results: list[dict[str, Any]] = [{} for _ in texts]
    for name, head in self.heads.items():
      rows = [i for i, n in enumerate(per_row) if n == name]
      if not rows:
        continue
      logits = self.head_logits(name, features[rows])
      outputs = {'scores': logits[:, 0]} if head.kind.spec.is_regression else {'logits': logits}
      for i, presented in zip(rows, head.kind.present(outputs), strict=True):
        results[i] = {'adapter': name, **presented}
    return results

  def _dataset(self, texts: Sequence[Text], per_row: Sequence[str]) -> data.SequenceDataset:
    """Each text tokenised for its adapter's task (pairs, its run's `max_length`), in order,
    with its adapter's index (`ADAPTER_INDEX`)."""
    ids: list[np.ndarray] = [np.zeros(0)] * len(texts)
    types: list[np.ndarray] = [np.zeros(0)] * len(texts)
    for name, head in self.heads.items():
      rows = [i for i, n in enumerate(per_row) if n == name]
      if not rows:
        continue
      examples = unlabelled_examples([texts[i] for i in rows], head.kind.spec)
      encoded = data.encode(examples, self.tokenizer, head.max_length)
      for j, i in enumerate(rows):
        ids[i], types[i] = encoded.input_ids(j), encoded.token_type_ids(j)
    longest = max(head.max_length for head in self.heads.values())
    index = composition.choice_index(self.branches, list(per_row))
    return data.SequenceDataset(
        sequences={
            'input_ids': data.Ragged.from_rows(ids, pad_value=int(self.tokenizer.pad_token_id),
                                               max_length=longest, mask_key='attention_mask'),
            'token_type_ids': data.Ragged.from_rows(types, pad_value=0, max_length=longest),
        },
        fields={ADAPTER_INDEX: np.asarray(index, np.int32)}, length_key='input_ids')


def load_adapter_server(workdirs: Sequence[str], batch_size: int = 64) -> AdapterServer:
  """Builds the base once and restores every workdir's best adapter (and head) over it.

  Raises:
    ValueError: no workdir, a run that is no encoder run (T5, decoder) or an NNX run, or runs on
      different base models.
    checkpoint.CheckpointError: a checkpoint that does not fit (see `restore_adapters`).
  """
  if not workdirs:
    raise ValueError('An adapter server needs at least one workdir.')
  runs = [read_run(w) for w in workdirs]
  for run in runs:
    if is_nnx_model(run.config.model):
      raise ValueError(f'{run.workdir} trained an NNX model ({run.config.model}); several workdirs '
                       f'share one Linen base. Predict with it alone (--workdir={run.workdir}).')
  kinds = [kind_name(run.spec, model_type_of(run.config.model), run.config.task_kind)
           for run in runs]
  for run, kind in zip(runs, kinds, strict=True):
    if kind not in ENCODER_KINDS:
      raise ValueError(f'{run.workdir} is a {kind} run (task {run.spec.name!r}); several workdirs '
                       'share one encoder base and label texts with classification or regression '
                       f'adapters only. Predict with {run.workdir} alone (--workdir={run.workdir}).')
  models_used = sorted({run.config.model for run in runs})
  if len(models_used) > 1:
    raise ValueError(f'The workdirs use different base models {models_used}; adapters share '
                     'one base only.')
  base = build_experiment(_base_config(runs[0].config), runs[0].spec)
  args, kwargs = base.task_kind.sample_call()
  spliced, params, restored = restore_adapters(
      [run.best_dir for run in runs], base.spliced, base.params, *args,
      base_name=runs[0].config.model, **kwargs)
  heads = {}
  for (name, item), run, kind in zip(restored.items(), runs, kinds, strict=True):
    head_params = traverse_util.unflatten_dict(
        {p.split('/', 1)[1]: v for p, v in item.head.items()}, sep='/')  # under `classifier/`
    module = base.pretrained.model.clone(num_labels=run.spec.num_labels, parent=None)
    heads[name] = AdapterHead(kind=KINDS[kind].create(run.spec), max_length=run.config.max_length,
                              module=module, params=head_params)
  return AdapterServer(spliced=spliced, params=params, heads=heads,
                       tokenizer=base.pretrained.tokenizer, batch_size=batch_size)


def _base_config(config):
  """The run's config without its adapter: `build_experiment` then builds the bare base (model,
  dtype, overrides, layout as the run had them) with a head. A run trained over a quantised base
  (`config.quantize`) is served over the float base its record fingerprints: adapters splice into
  float params."""
  config = config.copy_and_resolve_references()
  config.method, config.init_adapter_from, config.quantize = 'head', '', ''
  config.adapter_drop_layers = type(config.adapter_drop_layers)()
  return config
