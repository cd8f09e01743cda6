"""Data layer: task registry, GLUE/packaged/local loaders, metrics, tokenisation and batching.

Example:
  from adapters_jax import data
  task = data.load_task('rotten_tomatoes')
  tokenizer = data.load_tokenizer(path_to_tokenizer)
  train = data.encode(task['train'], tokenizer, max_length=128)
  valid = data.encode(task['validation'], tokenizer, max_length=128)
  for batch, resume_at in data.TrainBatches(train, 32, seed=0).iterate(data.DataPosition()):
    ...
  for batch in data.eval_batches(valid, 64):
    ...
  data.compute_metrics(task.spec, predictions, labels)

`load_glue` lives in `adapters_jax.data.glue` and is re-exported lazily here, so importing this
package does not import TensorFlow.
"""

from adapters_jax.data.batching import (
  Batch,
  BatchSource,
  DataPosition,
  TrainBatches,
  eval_batches,
  num_eval_batches,
)
from adapters_jax.data.buckets import bucket_length, length_buckets
from adapters_jax.data.encoding import EncodedDataset, encode, load_tokenizer, pad_batch
from adapters_jax.data.load import load_task
from adapters_jax.data.local_files import BadRowError, LocalTaskConfig, load_local_task, local_task_config
from adapters_jax.data.metrics import (
  METRIC_NAMES,
  accuracy,
  compute_metrics,
  f1_binary,
  matthews_corrcoef,
  pearson,
  spearman,
)
from adapters_jax.data.resplit import resplit
from adapters_jax.data.rotten_tomatoes import load_rotten_tomatoes
from adapters_jax.data.sequences import Ragged, SequenceDataset
from adapters_jax.data.task_registry import (
  GLUE_TASK_NAMES,
  NO_LABEL,
  Example,
  Task,
  TaskSpec,
  get_task,
  task_names,
)
from adapters_jax.data.tweets import load_tweet_sentiment


def load_glue(task: str, split: str, data_dir: str | None = None) -> list[Example]:
  """See `adapters_jax.data.glue.load_glue` (imported on first call: it pulls in TensorFlow)."""
  from adapters_jax.data.glue import load_glue as _load_glue

  return _load_glue(task, split, data_dir)


__all__ = [
    'GLUE_TASK_NAMES',
    'METRIC_NAMES',
    'NO_LABEL',
    'BadRowError',
    'Batch',
    'BatchSource',
    'DataPosition',
    'EncodedDataset',
    'Example',
    'LocalTaskConfig',
    'Ragged',
    'SequenceDataset',
    'Task',
    'TaskSpec',
    'TrainBatches',
    'accuracy',
    'bucket_length',
    'compute_metrics',
    'encode',
    'eval_batches',
    'f1_binary',
    'get_task',
    'length_buckets',
    'load_glue',
    'load_local_task',
    'local_task_config',
    'load_rotten_tomatoes',
    'load_task',
    'load_tokenizer',
    'load_tweet_sentiment',
    'matthews_corrcoef',
    'num_eval_batches',
    'pad_batch',
    'pearson',
    'resplit',
    'spearman',
    'task_names',
]
