"""Label texts with trained runs: the base model plus the best adapter checkpoint of workdirs.

    predictor = Predictor.from_workdir('workdirs/quickstart')
    predictor.predict(['A triumph.', 'Two hours I will never get back.'])
    # [{'label': 'fresh', 'probabilities': {...}}, {'label': 'rotten', ...}]

A T5 or decoder run gets the predictor of its kind (`generative_predictor`):

    Predictor.from_workdir('workdirs/mini_t5').predict(['A triumph.'])
    # [{'generated': 'fresh', 'label': 'fresh'}]
    Predictor.from_workdir('workdirs/mini_lm', max_new_tokens=20).predict(['name[The Eagle]'])
    # [{'generated': 'The Eagle is ...'}]

    several = MultiPredictor.from_workdirs(['workdirs/rt', 'workdirs/tweets'])
    several.predict(texts, adapters=['rotten_tomatoes', 'tweet_sentiment', ...])  # one per text
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from adapters_jax import data, models
from adapters_jax.checkpoint import restore
from adapters_jax.predict.generative import CausalLMPredictor, Seq2SeqPredictor, input_pairs
from adapters_jax.splicing import composition
from adapters_jax.task_kinds.causal_lm import CausalLM
from adapters_jax.task_kinds.choice import kind_name, model_type_of
from adapters_jax.task_kinds.seq2seq import Seq2Seq
from adapters_jax.train import members, run_files
from adapters_jax.train.experiment import Experiment, build_experiment

ENCODER_KINDS = ('classification', 'regression')  # the kinds MultiPredictor runs


def _load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, run_files.CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def spec_from_record(config: ml_collections.ConfigDict, record: dict[str, Any]) -> data.TaskSpec:
  """The task spec of a run: the registered one, or rebuilt from the checkpoint record (local files,
  so that predicting does not need the training files)."""
  if config.task != 'local':
    return data.get_task(config.task)
  label_names = record['extra'].get('label_names')
  metric = 'pearson' if label_names is None else 'accuracy'
  return data.TaskSpec(name=config.local_task.name, text_fields=tuple(config.local_task.text_columns),
                       label_names=tuple(label_names) if label_names else None,
                       metric_names=(metric,), primary_metric=metric, source='local')


@dataclasses.dataclass
class Predictor:
  """A base model with one run's best trained leaves, ready to label texts."""

  experiment: Experiment
  params: dict[str, Any]
  batch_size: int = 64

  def __post_init__(self):
    self._logits = jax.jit(
        lambda params, batch: self.experiment.logits(params, batch, deterministic=True))

  @classmethod
  def from_workdir(cls, workdir: str, batch_size: int = 64, max_new_tokens: int | None = None
                   ) -> Predictor | Seq2SeqPredictor | CausalLMPredictor:
    """The predictor of the run in `workdir`, by its task kind (chosen as training chose it,
    `train.kinds`): a `Predictor` for encoder runs (classification, regression), a
    `Seq2SeqPredictor` for T5 runs, a `CausalLMPredictor` for decoder runs.

    Args:
      max_new_tokens: decoder runs: tokens generated per prompt at most (None: the run's
        `config.lm.max_new_tokens`).
    """
    config = _load_config(workdir)
    record = restore.load_record(os.path.join(workdir, members.BEST_DIR))
    experiment = build_experiment(config, spec_from_record(config, record))
    params = members.load_best(experiment, workdir)
    if isinstance(experiment.task_kind, CausalLM):
      return CausalLMPredictor(experiment, params, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    if max_new_tokens is not None:
      raise ValueError(f'max_new_tokens applies to decoder (causal LM) runs; {workdir} is a '
                       f'{type(experiment.task_kind).__name__} run.')
    if isinstance(experiment.task_kind, Seq2Seq):
      return Seq2SeqPredictor(experiment, params, batch_size=batch_size)
    return cls(experiment=experiment, params=params, batch_size=batch_size)

  def predict(self, texts: Sequence[str | tuple[str, str]]) -> list[dict[str, Any]]:
    """Labels each text (or (text_a, text_b) pair for pair tasks).

    Returns:
      Per input: `label` and `probabilities` (classification) or `score` (regression).
    """
    spec = self.experiment.spec
    examples = [data.Example(text_a=a, text_b=b, label=0, idx=i)
                for i, (a, b) in enumerate(input_pairs(texts, spec))]
    if not examples:
      return []
    encoded = data.encode(examples, self.experiment.pretrained.tokenizer,
                          self.experiment.config.max_length)
    outputs = []
    for batch in data.eval_batches(encoded, self.batch_size):
      logits = self._logits(self.params, batch)
      outputs.append(np.asarray(logits)[batch['example_mask'] > 0])
    logits = np.concatenate(outputs)
    if spec.is_regression:
      return [{'score': float(row[0])} for row in logits]
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
    return [{'label': spec.label_names[int(np.argmax(p))],
             'probabilities': {name: float(v) for name, v in zip(spec.label_names, p, strict=True)}}
            for p in probabilities]


def _features(module, input_ids, attention_mask, token_type_ids):
  """The classification model's head input [batch, hidden] (pooled, or the first token)."""
  return module.head_features(input_ids, attention_mask, token_type_ids, deterministic=True)


@dataclasses.dataclass
class MultiPredictor:
  """Several adapter runs over one base model: label each text with a chosen adapter, or each row
  with its own adapter, in one forward pass per batch (`composition.PerExample`).

  Each adapter keeps its own task head and labels. Example:
    predictor = MultiPredictor.from_workdirs(['workdirs/rt', 'workdirs/tweets'])
    predictor.predict(['Great film.', 'Self-driving cars scare me.'],
                      adapters=['rotten_tomatoes', 'tweet_sentiment'])
  """

  spliced: Any
  params: dict[str, Any]
  heads: dict[str, Any]            # adapter name -> (head module, head params)
  specs: dict[str, data.TaskSpec]  # adapter name -> its task
  max_lengths: dict[str, int]
  tokenizer: Any
  batch_size: int = 64

  def __post_init__(self):
    self.names = tuple(self.specs)
    self.branches = composition.PerExample(*self.names)

    def features(params, ids, mask, types, index):
      return self.spliced.apply(params, ids, mask, types, method=_features, active=self.branches,
                                adapter_index=index)

    def single(params, ids, mask, types, name):
      return self.spliced.apply(params, ids, mask, types, method=_features, active=name)

    self._mixed = jax.jit(features)
    self._single = jax.jit(single, static_argnums=(4,))

  @classmethod
  def from_workdirs(cls, workdirs: Sequence[str], batch_size: int = 64) -> MultiPredictor:
    """Loads the base once and restores every workdir's best adapter (and head) over it."""
    if not workdirs:
      raise ValueError('MultiPredictor needs at least one workdir.')
    configs, records = [], []
    for workdir in workdirs:
      configs.append(_load_config(workdir))
      records.append(restore.load_record(os.path.join(workdir, members.BEST_DIR)))
      spec = spec_from_record(configs[-1], records[-1])
      kind = kind_name(spec, model_type_of(configs[-1].model), configs[-1].task_kind)
      if kind not in ENCODER_KINDS:
        raise ValueError(f'{workdir} is a {kind} run (task {spec.name!r}); several workdirs '
                         'share one encoder base and label texts with classification or regression '
                         f'adapters only. Predict with {workdir} alone (--workdir={workdir}).')
    models_used = sorted({c.model for c in configs})
    if len(models_used) > 1:
      raise ValueError(f'The workdirs use different base models {models_used}; adapters share '
                       'one base only.')
    specs = [spec_from_record(c, r) for c, r in zip(configs, records, strict=True)]
    config = configs[0]
    pretrained = models.load_pretrained(
        config.model, head='classification', num_labels=specs[0].num_labels, dtype=config.dtype,
        config_overrides=dict(config.model_overrides))
    sample = jax.numpy.ones((2, 16), jax.numpy.int32)
    spliced, params, restored = restore.restore_adapters(
        [os.path.join(w, members.BEST_DIR) for w in workdirs], pretrained.model, pretrained.params,
        sample, sample, jax.numpy.zeros_like(sample), base_name=config.model, deterministic=True)
    heads = {}
    for (name, item), spec in zip(restored.items(), specs, strict=True):
      head_params = traverse_util.unflatten_dict(
          {p.split('/', 1)[1]: v for p, v in item.head.items()}, sep='/')
      module = pretrained.model.clone(num_labels=spec.num_labels, parent=None)
      heads[name] = (module, head_params)
    return cls(spliced=spliced, params=params, heads=heads,
               specs=dict(zip(restored, specs, strict=True)),
               max_lengths=dict(zip(restored, (c.max_length for c in configs), strict=True)),
               tokenizer=pretrained.tokenizer, batch_size=batch_size)

  def _logits(self, name: str, features: np.ndarray) -> np.ndarray:
    module, head_params = self.heads[name]

    def head(m, x):
      return m.classifier(x, deterministic=True)

    return np.asarray(module.apply({'params': {'classifier': head_params}}, features,
                                   method=head))

  def predict(self, texts: Sequence[str | tuple[str, str]], adapter: str | None = None,
              adapters: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Labels texts with one adapter (`adapter`) or each with its own (`adapters`, one per text).

    Returns:
      Per input: `adapter`, and `label` + `probabilities` (classification) or `score`.
    """
    if (adapter is None) == (adapters is None):
      raise ValueError('Give either adapter= (one for all texts) or adapters= (one per text).')
    per_row = [adapter] * len(texts) if adapters is None else list(adapters)
    if len(per_row) != len(texts):
      raise ValueError(f'{len(per_row)} adapter names for {len(texts)} texts; give one per text.')
    unknown = sorted({n for n in per_row if n not in self.specs}, key=str)
    if unknown:
      raise ValueError(f'Unknown adapter(s) {unknown}; loaded adapters: {list(self.names)}.')
    rows = []  # (token ids, type ids) per text
    for i, (text, name) in enumerate(zip(texts, per_row, strict=True)):
      spec = self.specs[name]
      pair = (text, None) if isinstance(text, str) else tuple(text)
      if (pair[1] is not None) != spec.is_pair:
        raise ValueError(f'Input {i + 1}: adapter {name!r} (task {spec.name!r}) takes '
                         f'{"text pairs" if spec.is_pair else "one text"}.')
      encoded = data.encode([data.Example(text_a=pair[0], text_b=pair[1], label=0, idx=i)],
                            self.tokenizer, self.max_lengths[name])
      rows.append((encoded.input_ids(0), encoded.token_type_ids(0)))
    if not rows:
      return []
    buckets = data.length_buckets(max(self.max_lengths.values()))
    pad_id = int(self.tokenizer.pad_token_id)
    features = []
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      names = per_row[start:start + self.batch_size]
      length = data.bucket_length(max(len(ids) for ids, _ in chunk), buckets)
      ids = np.full((self.batch_size, length), pad_id, np.int32)
      types = np.zeros((self.batch_size, length), np.int32)
      mask = np.zeros((self.batch_size, length), np.int32)
      for r, (row_ids, row_types) in enumerate(chunk + [chunk[-1]] * (self.batch_size - len(chunk))):
        ids[r, :len(row_ids)], types[r, :len(row_ids)], mask[r, :len(row_ids)] = row_ids, row_types, 1
      if len(set(names)) == 1:
        out = self._single(self.params, ids, mask, types, names[0])
      else:
        index = composition.choice_index(self.branches, names + [names[-1]] * (
            self.batch_size - len(chunk)))
        out = self._mixed(self.params, ids, mask, types, index)
      features.append(np.asarray(out)[:len(chunk)])
    features = np.concatenate(features)
    results = [None] * len(rows)
    for name in self.names:
      rows_of = [i for i, n in enumerate(per_row) if n == name]
      if not rows_of:
        continue
      logits = self._logits(name, features[rows_of])
      spec = self.specs[name]
      for i, row in zip(rows_of, logits, strict=True):
        if spec.is_regression:
          results[i] = {'adapter': name, 'score': float(row[0])}
        else:
          p = np.asarray(jax.nn.softmax(row))
          results[i] = {'adapter': name, 'label': spec.label_names[int(np.argmax(p))],
                        'probabilities': {k: float(v) for k, v in
                                          zip(spec.label_names, p, strict=True)}}
    return results
