r"""GLUE's own download files with a few synthetic rows, prepared offline by tfds's real GLUE builder.

`write_glue_files(directory)` writes what tfds's `glue` builder downloads -- the archives
(`RTE.zip` holding `RTE/train.tsv`, `dev.tsv`, `test.tsv`, ...; `QNLIv2.zip` holding `QNLI/...`),
MRPC's three text files and the diagnostic set's one TSV -- under the file names tfds records
for those URLs, in GLUE's column layouts (CoLA's header-less train/dev files, MRPC's byte-order
mark, MNLI's matched and mismatched files, test files without labels). Every text names its
task, split, row and field (`'rte dev 2 sentence2'`), so a reader that swaps fields or rows
shows it.

`prepare_glue(config, files_dir, data_dir)` runs tfds's `Glue` builder on those files: its
download manager finds them in the manual directory (no network), checks them against their
checksums, extracts the archives and the builder's own `_split_generators` /
`_generate_examples` write the dataset into `data_dir/glue/<config>/<version>`, where
`tfds.load('glue/<config>', data_dir=data_dir)` (and so `adapters_jax.data.load_glue`) reads
it. The only difference from a download: the checksums tfds checks are those of these files
(`GlueFromFiles.url_infos`), not those of the real GLUE archives.

Besides the nine tasks `adapters_jax.data` reads, tfds's `mnli_matched` and `mnli_mismatched`
(MNLI's matched or mismatched dev and test files as `validation` and `test`, from the same
`MNLI.zip`) and `ax` (the diagnostic set: one unlabelled `test` split, premise and hypothesis)
are prepared the same way (`EXTRA_CONFIGS`).

    python scripts/glue_files.py --files_dir=/tmp/glue_files --data_dir=/tmp/tfds --configs=rte,stsb

Needs `importlib_resources` (requirements.txt): tfds's builder imports it on Python 3.11.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import pathlib
import zipfile

# The nine GLUE configs `adapters_jax.data` reads.
CONFIGS = ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'wnli')
# tfds's other GLUE configs: MNLI's matched / mismatched halves and the diagnostic set.
EXTRA_CONFIGS = ('mnli_matched', 'mnli_mismatched', 'ax')
# config -> (archive file name, folder inside it); MRPC is three plain files instead.
ARCHIVES = {'cola': ('CoLA.zip', 'CoLA'), 'sst2': ('SST-2.zip', 'SST-2'), 'qqp': ('QQP.zip', 'QQP'),
            'stsb': ('STS-B.zip', 'STS-B'), 'mnli': ('MNLI.zip', 'MNLI'),
            'qnli': ('QNLIv2.zip', 'QNLI'), 'rte': ('RTE.zip', 'RTE'), 'wnli': ('WNLI.zip', 'WNLI'),
            'mnli_matched': ('MNLI.zip', 'MNLI'), 'mnli_mismatched': ('MNLI.zip', 'MNLI')}
AX_FILE = 'tsvsWithoutLabels_AX.tsv'  # the diagnostic set: one TSV, no archive
MRPC_FILES = {'train': 'msr_paraphrase_train.txt', 'test': 'msr_paraphrase_test.txt',
              'dev_ids': 'data_mrpc_dev_ids.tsv'}
# Label strings as GLUE's files write them, in tfds's class order.
LABELS = {'cola': ('0', '1'), 'sst2': ('0', '1'), 'mrpc': ('0', '1'), 'qqp': ('0', '1'),
          'mnli': ('entailment', 'neutral', 'contradiction'),
          'qnli': ('entailment', 'not_entailment'), 'rte': ('entailment', 'not_entailment'),
          'wnli': ('0', '1')}
ROWS = 6  # rows per file


def text(config: str, split: str, row: int, field: str) -> str:
  """The synthetic text of one field of one row, e.g. 'rte dev 2 sentence2'."""
  return f'{config} {split} {row} {field}'


def stsb_score(row: int) -> float:
  """STS-B's similarity score of row `row` (exact in float32)."""
  return 0.25 + 0.75 * row


def _tsv(rows: list[list[str]]) -> str:
  out = io.StringIO()
  csv.writer(out, delimiter='\t', quoting=csv.QUOTE_NONE, lineterminator='\n').writerows(rows)
  return out.getvalue()


def _label(config: str, row: int) -> str:
  return LABELS[config][row % len(LABELS[config])]


def _split_files(config: str) -> dict[str, str]:
  """File name inside the archive's folder -> its TSV text, in GLUE's layout for `config`."""
  files = {}
  if config == 'cola':  # train/dev: no header; source, label, original label, sentence.
    for split in ('train', 'dev'):
      files[f'{split}.tsv'] = _tsv([['gj04', _label(config, i), '', text(config, split, i, 'sentence')]
                                    for i in range(ROWS)])
    files['test.tsv'] = _tsv([['index', 'sentence']] +
                             [[str(i), text(config, 'test', i, 'sentence')] for i in range(ROWS)])
  elif config == 'sst2':
    for split in ('train', 'dev'):
      files[f'{split}.tsv'] = _tsv([['sentence', 'label']] + [
          [text(config, split, i, 'sentence'), _label(config, i)] for i in range(ROWS)])
    files['test.tsv'] = _tsv([['index', 'sentence']] +
                             [[str(i), text(config, 'test', i, 'sentence')] for i in range(ROWS)])
  elif config == 'qqp':
    for split in ('train', 'dev'):
      files[f'{split}.tsv'] = _tsv([['id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate']] + [
          [str(i), str(2 * i), str(2 * i + 1), text(config, split, i, 'question1'),
           text(config, split, i, 'question2'), _label(config, i)] for i in range(ROWS)])
    files['test.tsv'] = _tsv([['id', 'question1', 'question2']] + [
        [str(i), text(config, 'test', i, 'question1'), text(config, 'test', i, 'question2')]
        for i in range(ROWS)])
  elif config == 'stsb':
    head = ['index', 'genre', 'filename', 'year', 'old_index', 'source1', 'source2', 'sentence1',
            'sentence2']
    for split in ('train', 'dev', 'test'):
      labelled = split != 'test'
      files[f'{split}.tsv'] = _tsv([head + ['score'] * labelled] + [
          [str(i), 'main-news', 'headlines', '2015', str(i), 'none', 'none',
           text(config, split, i, 'sentence1'), text(config, split, i, 'sentence2')] +
          [f'{stsb_score(i):.3f}'] * labelled for i in range(ROWS)])
  elif config == 'mnli':
    head = ['index', 'promptID', 'pairID', 'genre', 'sentence1_binary_parse',
            'sentence2_binary_parse', 'sentence1_parse', 'sentence2_parse', 'sentence1', 'sentence2']
    for split in ('train', 'dev_matched', 'dev_mismatched', 'test_matched', 'test_mismatched'):
      labels = {'train': ['label1', 'gold_label'], 'test_matched': [], 'test_mismatched': []}.get(
          split, ['label1', 'label2', 'label3', 'label4', 'label5', 'gold_label'])
      files[f'{split}.tsv'] = _tsv([head + labels] + [
          [str(i), str(i), f'{i}n', 'fiction', '( a )', '( b )', '(ROOT a)', '(ROOT b)',
           text(config, split, i, 'premise'), text(config, split, i, 'hypothesis')] +
          [_label(config, i)] * len(labels) for i in range(ROWS)])
  else:  # qnli, rte, wnli: index, two texts, label (none in test).
    field_a, field_b = ('question', 'sentence') if config == 'qnli' else ('sentence1', 'sentence2')
    for split in ('train', 'dev', 'test'):
      labelled = split != 'test'
      files[f'{split}.tsv'] = _tsv([['index', field_a, field_b] + ['label'] * labelled] + [
          [str(i), text(config, split, i, field_a), text(config, split, i, field_b)] +
          [_label(config, i)] * labelled for i in range(ROWS)])
  return files


def _ax_file() -> str:
  """The diagnostic set as GLUE serves it: index, sentence1 (premise), sentence2 (hypothesis)."""
  return _tsv([['index', 'sentence1', 'sentence2']] + [
      [str(i), text('ax', 'test', i, 'premise'), text('ax', 'test', i, 'hypothesis')]
      for i in range(ROWS)])


def _mrpc_files() -> dict[str, bytes]:
  """MRPC's three files: train (with a UTF-8 byte-order mark, as served), test, dev ids.

  Rows 1 and 4 of the train file are the dev split (listed in the dev-ids file); the builder
  keeps the train file's row number as `idx` in both splits.
  """
  head = ['Quality', '#1 ID', '#2 ID', '#1 String', '#2 String']
  dev_rows = (1, 4)
  train = [head] + [
      [_label('mrpc', i), str(100 + i), str(200 + i),
       text('mrpc', 'dev' if i in dev_rows else 'train', i, 'sentence1'),
       text('mrpc', 'dev' if i in dev_rows else 'train', i, 'sentence2')] for i in range(ROWS)]
  test = [head] + [[_label('mrpc', i), str(300 + i), str(400 + i),
                    text('mrpc', 'test', i, 'sentence1'), text('mrpc', 'test', i, 'sentence2')]
                   for i in range(ROWS)]
  dev_ids = [[str(100 + i), str(200 + i)] for i in dev_rows]
  return {MRPC_FILES['train']: b'\xef\xbb\xbf' + _tsv(train).encode(),
          MRPC_FILES['test']: _tsv(test).encode(), MRPC_FILES['dev_ids']: _tsv(dev_ids).encode()}


def write_glue_files(directory: str | os.PathLike, configs=CONFIGS) -> pathlib.Path:
  """Writes the download files of `configs` into `directory` under tfds's file names."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for config in configs:
    if config == 'mrpc':
      for name, data in _mrpc_files().items():
        (directory / name).write_bytes(data)
      continue
    if config == 'ax':
      (directory / AX_FILE).write_text(_ax_file())
      continue
    archive, folder = ARCHIVES[config]
    files = _split_files('mnli' if config.startswith('mnli') else config)  # one MNLI.zip for three
    with zipfile.ZipFile(directory / archive, 'w') as z:
      for name, content in files.items():
        z.writestr(f'{folder}/{name}', content)
  return directory


def glue_builder_class(files_dir: str | os.PathLike):
  """tfds's `Glue` builder whose expected checksums are those of the files in `files_dir`."""
  from tensorflow_datasets.core.download import checksums
  from tensorflow_datasets.text import glue

  files_dir = pathlib.Path(files_dir)
  url_infos = {}
  for url, info in checksums.get_all_url_infos().items():
    if info.filename and (files_dir / info.filename).exists() and url in _glue_urls(glue):
      local = checksums.compute_url_info(files_dir / info.filename)
      url_infos[url] = checksums.UrlInfo(size=local.size, checksum=local.checksum,
                                         filename=info.filename)

  class GlueFromFiles(glue.Glue, skip_registration=True):
    """tfds's GLUE builder; the files it checks are those written by `write_glue_files`."""

    name = 'glue'  # Prepares into <data_dir>/glue/<config>/<version>, where tfds.load reads.

  GlueFromFiles.url_infos = url_infos
  return GlueFromFiles


def _glue_urls(glue_module) -> set[str]:
  urls = {c.data_url for c in glue_module.Glue.BUILDER_CONFIGS if c.data_url}
  return urls | {glue_module._MRPC_TRAIN, glue_module._MRPC_TEST, glue_module._MRPC_DEV_IDS}


def prepare_glue(config: str, files_dir: str | os.PathLike, data_dir: str | os.PathLike) -> None:
  """Runs tfds's GLUE builder for `config` on the files in `files_dir`, offline."""
  import tensorflow_datasets as tfds

  builder = glue_builder_class(files_dir)(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(files_dir), try_download_gcs=False))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--files_dir', required=True, help='Where the GLUE download files go.')
  parser.add_argument('--data_dir', required=True, help='The tfds data_dir to prepare into.')
  parser.add_argument('--configs', default=','.join(CONFIGS), help='Comma-separated GLUE configs.')
  args = parser.parse_args()
  configs = [c for c in args.configs.split(',') if c]
  unknown = sorted(set(configs) - set(CONFIGS + EXTRA_CONFIGS))
  if unknown:
    parser.error(f'unknown GLUE config(s) {unknown}; valid: {", ".join(CONFIGS + EXTRA_CONFIGS)}.')
  write_glue_files(args.files_dir, configs)
  for config in configs:
    prepare_glue(config, args.files_dir, args.data_dir)
    print(f'prepared glue/{config} in {args.data_dir}')


if __name__ == '__main__':
  main()
