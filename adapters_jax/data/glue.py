"""GLUE through TensorFlow Datasets (`glue/<task>`), read into plain Python `Example`s.

TensorFlow is imported lazily, inside `load_glue`, so users of the packaged and local-file tasks
(and their tests) never pay its import time. Before the first load, GPUs are hidden from
TensorFlow so it does not reserve accelerator memory that JAX needs.

Real GLUE is downloaded and prepared by tfds's `glue` builder on first use (network needed) into
`data_dir` (default ~/tensorflow_datasets); later loads read the prepared copy. The builder needs
`importlib_resources` (requirements.txt). GLUE test splits have no gold labels: their examples
carry label -1. tests/data/test_glue_builder.py runs the builder offline on files in GLUE's own
layout (scripts/glue_files.py).

Example:
  examples = load_glue('rte', 'validation')
  examples[0].text_a, examples[0].text_b, examples[0].label   # label 0 = 'entailment'
"""

from __future__ import annotations

from absl import logging

from adapters_jax.data.task_registry import GLUE_TASK_NAMES, Example, TaskSpec, get_task

_GPUS_HIDDEN = False


def hide_gpus_from_tensorflow() -> None:
  """Makes TensorFlow see no GPU, once per process; safe to call again or after TF started."""
  global _GPUS_HIDDEN
  if _GPUS_HIDDEN:
    return
  import tensorflow as tf  # Lazy: importing TF costs seconds.

  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError) as e:
    # Raised when TF already initialised its devices; nothing more can be done from here.
    logging.warning('Could not hide GPUs from TensorFlow (already initialised): %s', e)
  _GPUS_HIDDEN = True


def glue_spec(task: str) -> TaskSpec:
  """The spec of a GLUE task named 'rte' or 'glue/rte'; errors list the GLUE task names."""
  name = task.lower().removeprefix('glue/')
  if name not in GLUE_TASK_NAMES:
    raise KeyError(f'Unknown GLUE task {task!r}; valid: {", ".join(GLUE_TASK_NAMES)}.')
  return get_task(name)


def load_glue(task: str, split: str, data_dir: str | None = None) -> list[Example]:
  """Loads one split of a GLUE task.

  Args:
    task: 'rte' or 'glue/rte' (any of cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli).
    split: one of the task's splits, e.g. 'train', 'validation', 'test'; MNLI has
      'validation_matched', 'validation_mismatched', 'test_matched', 'test_mismatched'.
    data_dir: tfds data directory; None uses tfds' default (~/tensorflow_datasets).

  Returns:
    Examples in tfds order: text_a/text_b from the task's text fields (text_b None for
    single-sentence tasks), label an int class id (float for STS-B; -1 on test splits),
    idx GLUE's example index.
  """
  spec = glue_spec(task)
  if split not in spec.splits:
    raise ValueError(f'GLUE task {spec.name!r} has no split {split!r}; valid: '
                     f'{", ".join(spec.splits)}.')
  hide_gpus_from_tensorflow()
  import tensorflow_datasets as tfds  # Lazy: importing TF costs seconds.

  try:
    dataset = tfds.load(spec.tfds_name, split=split, data_dir=data_dir, shuffle_files=False)
  except ModuleNotFoundError as e:
    if e.name != 'importlib_resources':
      raise
    raise ModuleNotFoundError(
        f"tfds's GLUE builder ({spec.tfds_name}) needs importlib_resources; install it with "
        "`pip install importlib_resources==7.1.0` (pinned in requirements.txt).",
        name=e.name) from e
  field_a = spec.text_fields[0]
  field_b = spec.text_fields[1] if spec.is_pair else None
  examples = []
  for row in tfds.as_numpy(dataset):
    label = float(row['label']) if spec.is_regression else int(row['label'])
    examples.append(
        Example(
            text_a=_decode(row[field_a]),
            text_b=None if field_b is None else _decode(row[field_b]),
            label=label,
            idx=int(row['idx']),
        ))
  logging.info('Loaded %d examples of %s[%s].', len(examples), spec.tfds_name, split)
  return examples


def _decode(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)
