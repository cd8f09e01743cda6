"""Writes MetaMathQA and GSM8K files in the hub's layout and formats (`data.metamathqa`): a JSON
list for MetaMathQA, parquet for GSM8K."""

import json
import os

import pyarrow
import pyarrow.parquet

from adapters_jax.data import metamathqa


def metamath_rows(count: int) -> list[dict[str, str]]:
  """`count` short rows, then one whose `query response` is one character over the limit."""
  rows = [{'query': f'Tom has {i} apples and buys 2 more. How many does he have?',
           'response': f'He has {i} + 2 = {i + 2} apples. The answer is: {i + 2}',
           'type': 'GSM_Rephrased', 'original_question': f'Tom has {i} apples.'}
          for i in range(count)]
  long_query = 'x' * (metamathqa.CHAR_LIMIT - len(' The answer is: 1'))  # 1 over with the space
  rows.append({'query': long_query + 'y', 'response': 'The answer is: 1', 'type': 'MATH_SV',
               'original_question': ''})
  return rows


def gsm8k_rows(count: int, offset: int = 0) -> list[dict[str, str]]:
  return [{'question': f'Ann reads {i} pages a day for 3 days. How many pages?',
           'answer': f'She reads {i}*3=<<{i}*3={3 * i}>>{3 * i} pages.\n#### {3 * i}'}
          for i in range(offset, offset + count)]


def write_metamathqa_dir(root, train: int = 12, gsm8k_train: int = 60, gsm8k_test: int = 6):
  """The files under `root` (the layout `--config.data_dir` expects); returns `root`."""
  repo, name = metamathqa.METAMATHQA_FILE
  path = os.path.join(root, metamathqa.LOCAL_FOLDERS[repo], name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(metamath_rows(train), f)
  counts = {'train': (gsm8k_train, 0), 'test': (gsm8k_test, 1000)}
  for split, (repo, name) in metamathqa.GSM8K_FILES.items():
    path = os.path.join(root, metamathqa.LOCAL_FOLDERS[repo], name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(gsm8k_rows(*counts[split])), path)
  return str(root)
