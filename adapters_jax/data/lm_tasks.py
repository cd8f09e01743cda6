"""Language-model tasks read from a directory: `e2e_nlg` (the challenge's CSV files) and
`lm_jsonl` (prompt/completion or chat records). Their examples are `lm_jsonl.LMRecord`s.

  * `e2e_nlg`: `trainset.csv` -> one record per (MR, reference); `devset.csv` (validation) and
    `testset_w_refs.csv` (test) -> one record per MR with all its references (`data.e2e`);
  * `lm_jsonl`: `train.jsonl`, `validation.jsonl` and, if present, `test.jsonl`.

Example:
  task = load_lm_task(get_task('e2e_nlg'), 'e2e-dataset')
  task['validation'][0].references
"""

from __future__ import annotations

import os

from adapters_jax.data import e2e
from adapters_jax.data.lm_jsonl import read_lm_jsonl
from adapters_jax.data.task_registry import Task, TaskSpec

E2E_FILES = {'train': 'trainset.csv', 'validation': 'devset.csv', 'test': 'testset_w_refs.csv'}
JSONL_FILES = {'train': 'train.jsonl', 'validation': 'validation.jsonl', 'test': 'test.jsonl'}
OPTIONAL_SPLITS = ('test',)


def load_lm_task(spec: TaskSpec, data_dir: str | None) -> Task:
  """The splits of `spec` from the files in `data_dir`.

  Raises:
    ValueError: no `data_dir`, or a required file is missing (named, with the directory).
  """
  files = E2E_FILES if spec.source == 'e2e' else JSONL_FILES
  if not data_dir:
    raise ValueError(f'Task {spec.name!r} reads {sorted(files.values())} from a directory: set '
                     '--config.data_dir.')
  splits = {}
  for split, name in files.items():
    path = os.path.join(data_dir, name)
    if not os.path.isfile(path):
      if split in OPTIONAL_SPLITS:
        continue
      raise ValueError(f'Task {spec.name!r}: {path} not found; {data_dir} needs '
                       f'{sorted(files.values())} (test optional).')
    if spec.source == 'e2e':
      items = e2e.read_e2e_csv(path)
      splits[split] = (e2e.training_records(items) if split == 'train'
                       else e2e.evaluation_records(items))
    else:
      splits[split] = read_lm_jsonl(path)
  return Task(spec=spec, splits=splits)
