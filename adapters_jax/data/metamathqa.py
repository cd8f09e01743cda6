"""MetaMathQA -> GSM8K, as PEFT's method comparison (`method_comparison/MetaMathQA` in
huggingface/peft) builds it: train on MetaMathQA, validate on 50 GSM8K training questions, test
on the GSM8K test set by generation and answer parsing (`data.math_answers`).

Files, in the layout of the two hub repositories (`huggingface-cli download meta-math/MetaMathQA
--repo-type dataset --local-dir DIR/MetaMathQA`, and `openai/gsm8k` into `DIR/gsm8k`):

    DIR/MetaMathQA/MetaMathQA-395K.json             a JSON list of {query, response, type, ...}
    DIR/gsm8k/main/train-00000-of-00001.parquet     rows {question, answer}
    DIR/gsm8k/main/test-00000-of-00001.parquet

With no `data_dir` the same files come from the hub (`huggingface_hub.hf_hub_download`, cached).
`.json` (a list), `.jsonl` and `.parquet` files are read by their extension.

The recipe (PEFT's `data.py`):
  * train: MetaMathQA rows with `len(f'{query} {response}') <= CHAR_LIMIT` (93.8% of them), each
    trained on as one text, `QUERY_TEMPLATE.format(query=query) + response`: the loss covers the
    question as well (PEFT's labels are the whole input, plus the first EOS);
  * validation: `VALID_SIZE` GSM8K training questions, those of `np.random.seed(0);
    np.random.shuffle(arange(n))[:VALID_SIZE]`;
  * test: every GSM8K test question. Evaluation records prompt with the template and carry the
    GSM8K answer (`... #### 18`) as their reference.

Example:
  splits = load_metamathqa('metamathqa-data')   # {'train': [LMRecord, ...], 'validation', 'test'}
"""

from __future__ import annotations

import json
import os

import numpy as np

from adapters_jax.data.lm_jsonl import LMRecord

QUERY_TEMPLATE = 'Question: {query} Think step by step.\nAnswer:'
CHAR_LIMIT = 1300
VALID_SIZE = 50
# (hub repository, file in it) of each source.
METAMATHQA_FILE = ('meta-math/MetaMathQA', 'MetaMathQA-395K.json')
GSM8K_FILES = {'train': ('openai/gsm8k', 'main/train-00000-of-00001.parquet'),
               'test': ('openai/gsm8k', 'main/test-00000-of-00001.parquet')}
LOCAL_FOLDERS = {'meta-math/MetaMathQA': 'MetaMathQA', 'openai/gsm8k': 'gsm8k'}


def read_rows(path: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
  """The rows of a `.json` (list), `.jsonl` or `.parquet` file, each with `columns`.

  Raises:
    ValueError: another extension, or a row without one of `columns` (file and row named).
  """
  if path.endswith('.parquet'):
    import pyarrow.parquet  # only for parquet files

    rows = pyarrow.parquet.read_table(path, columns=list(columns)).to_pylist()
  elif path.endswith('.jsonl'):
    with open(path, encoding='utf-8') as f:
      rows = [json.loads(line) for line in f if line.strip()]
  elif path.endswith('.json'):
    with open(path, encoding='utf-8') as f:
      rows = json.load(f)
  else:
    raise ValueError(f'{path}: read .json, .jsonl or .parquet files only.')
  for i, row in enumerate(rows):
    missing = [c for c in columns if not isinstance(row.get(c), str)]
    if missing:
      raise ValueError(f'{path}: row {i} has no text in {missing}; the rows need {list(columns)}.')
  return rows


def source_path(data_dir: str | None, repo_and_file: tuple[str, str]) -> str:
  """The file in `data_dir` (the hub layout), or, with no `data_dir`, its hub download."""
  repo, filename = repo_and_file
  if data_dir:
    path = os.path.join(data_dir, LOCAL_FOLDERS[repo], filename)
    if not os.path.isfile(path):
      raise ValueError(f'{path} not found; download it with `huggingface-cli download {repo} '
                       f'--repo-type dataset --local-dir {os.path.dirname(path.removesuffix(filename))}`'
                       ', or leave --config.data_dir empty to read the hub.')
    return path
  import huggingface_hub  # only when reading the hub

  return huggingface_hub.hf_hub_download(repo, filename, repo_type='dataset')


def training_records(rows: list[dict[str, str]]) -> list[LMRecord]:
  """MetaMathQA rows within `CHAR_LIMIT`, each one whole-text target (no prompt)."""
  return [LMRecord(prompt='', completion=QUERY_TEMPLATE.format(query=r['query']) + r['response'],
                   references=(r['response'],))
          for r in rows if len(f"{r['query']} {r['response']}") <= CHAR_LIMIT]


def evaluation_records(rows: list[dict[str, str]]) -> list[LMRecord]:
  """GSM8K rows: the templated question as prompt, the answer as completion and reference."""
  return [LMRecord(prompt=QUERY_TEMPLATE.format(query=r['question']), completion=r['answer'],
                   references=(r['answer'],)) for r in rows]


def validation_indices(num_rows: int) -> np.ndarray:
  """PEFT's validation questions among `num_rows` GSM8K training rows."""
  indices = np.arange(num_rows)
  np.random.RandomState(0).shuffle(indices)  # = np.random.seed(0); np.random.shuffle(indices)
  return indices[:VALID_SIZE]


def load_metamathqa(data_dir: str | None) -> dict[str, list[LMRecord]]:
  """`train`, `validation` and `test` records (see the module docstring)."""
  metamath = read_rows(source_path(data_dir, METAMATHQA_FILE), ('query', 'response'))
  gsm8k = {split: read_rows(source_path(data_dir, files), ('question', 'answer'))
           for split, files in GSM8K_FILES.items()}
  valid = [gsm8k['train'][i] for i in validation_indices(len(gsm8k['train']))]
  return {'train': training_records(metamath), 'validation': evaluation_records(valid),
          'test': evaluation_records(gsm8k['test'])}
