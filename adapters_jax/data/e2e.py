"""The E2E NLG challenge (Novikova et al. 2017) in its own file format, as language-model records.

The challenge's files (`trainset.csv`, `devset.csv`, `testset_w_refs.csv`) are CSV with a header
`mr,ref`: one row per (meaning representation, human reference); an MR appears on several
consecutive or scattered rows, one per reference. An MR is a comma-separated list of
`attribute[value]`, e.g. `name[The Vaults], eatType[pub], near[Café Adriatic]`.

  * `read_e2e_csv` groups the rows by MR (first-appearance order): `E2EItem(mr, references)`;
  * `render_mr` writes an MR the way the LoRA repository's E2E data does
    (`name : The Vaults | Type : pub | near : Café Adriatic`);
  * `training_records`: one prompt/completion record per (MR, reference) pair (every reference is
    a training target, as in the LoRA paper); `evaluation_records`: one record per MR carrying
    all its references (generation is scored against all of them).

Prompt: `render_mr(mr) + ' ||'`; completion: `' ' + reference` (the tokenizer's EOS is appended
at tokenisation, `lm_jsonl.tokenize_record`).

Example:
  items = read_e2e_csv('e2e-dataset/devset.csv')
  records = evaluation_records(items)        # LMRecord(prompt, completion, references)
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re

from adapters_jax.data.lm_jsonl import LMRecord

COLUMNS = ('mr', 'ref')
PROMPT_END = ' ||'
# E2E attribute names -> the names in the LoRA repository's E2E files.
ATTRIBUTE_NAMES = {'eatType': 'Type', 'priceRange': 'price', 'customer rating': 'customer rating',
                   'familyFriendly': 'family friendly'}
_ATTRIBUTE = re.compile(r'\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)')


class E2EFormatError(ValueError):
  """A malformed E2E file or MR (names file and line)."""


@dataclasses.dataclass(frozen=True)
class E2EItem:
  """One meaning representation and its human references (in file order)."""

  mr: str
  references: tuple[str, ...]


def parse_mr(mr: str, where: str = '') -> list[tuple[str, str]]:
  """`[(attribute, value), ...]` of an MR string; `where` prefixes errors."""
  pairs, pos = [], 0
  while pos < len(mr.rstrip()):
    match = _ATTRIBUTE.match(mr, pos)
    if match is None:
      raise E2EFormatError(f'{where}MR {mr!r} is not a comma-separated list of attribute[value] '
                           f'(stuck at character {pos}: {mr[pos:pos + 20]!r}).')
    pairs.append((match.group(1), match.group(2).strip()))
    pos = match.end()
  if not pairs:
    raise E2EFormatError(f'{where}empty MR.')
  return pairs


def render_mr(mr: str, where: str = '') -> str:
  """`name[X], eatType[pub]` -> `name : X | Type : pub` (the LoRA repository's rendering)."""
  return ' | '.join(f'{ATTRIBUTE_NAMES.get(a, a)} : {v}' for a, v in parse_mr(mr, where))


def read_e2e_csv(path: str | os.PathLike) -> list[E2EItem]:
  """The MRs of an E2E CSV file with their references, grouped, in first-appearance order.

  Raises:
    E2EFormatError: a missing `mr`/`ref` column, an empty cell or a malformed MR, as
      `path:line: reason`.
  """
  grouped: dict[str, list[str]] = {}
  with open(path, encoding='utf-8-sig', newline='') as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise E2EFormatError(f'{path}:1: missing column(s) {missing}; an E2E file has the header '
                           f'"mr,ref" (found {reader.fieldnames}).')
    for row in reader:
      where = f'{path}:{reader.line_num}: '
      mr, ref = (row['mr'] or '').strip(), (row['ref'] or '').strip()
      if not mr or not ref:
        raise E2EFormatError(f'{where}empty {"mr" if not mr else "ref"} cell.')
      parse_mr(mr, where)
      grouped.setdefault(mr, []).append(ref)
  if not grouped:
    raise E2EFormatError(f'{path}: no rows after the header.')
  return [E2EItem(mr, tuple(refs)) for mr, refs in grouped.items()]


def prompt_of(item: E2EItem) -> str:
  return render_mr(item.mr) + PROMPT_END


def training_records(items: list[E2EItem]) -> list[LMRecord]:
  """One record per (MR, reference) pair."""
  return [LMRecord(prompt=prompt_of(item), completion=' ' + ref, references=item.references)
          for item in items for ref in item.references]


def evaluation_records(items: list[E2EItem]) -> list[LMRecord]:
  """One record per MR; its completion is the first reference, all references are scored."""
  return [LMRecord(prompt=prompt_of(item), completion=' ' + item.references[0],
                   references=item.references) for item in items]
