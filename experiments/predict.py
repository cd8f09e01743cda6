r"""Labels texts with trained runs (base model + best adapter checkpoints).

  echo "A quiet, devastating film." | python -m experiments.predict --workdir=workdirs/quickstart
  python -m experiments.predict --workdir=workdirs/rte --input=pairs.tsv --output=labels.jsonl

Several adapters over one base (comma-separated workdirs; the base is loaded once):

  python -m experiments.predict --workdir=workdirs/rt,workdirs/tweets --adapter=tweet_sentiment
  printf 'rotten_tomatoes\tA triumph.\ntweet_sentiment\tWaymo rocks\n' | \
      python -m experiments.predict --workdir=workdirs/rt,workdirs/tweets --adapter_column

Input: one text per line; for pair tasks two texts separated by a tab. With --adapter_column each
line starts with the adapter's name and a tab (mixed rows run in one batch). Output: one JSON object
per line with the text, the label and the class probabilities (or the score for regression), and
the adapter when several workdirs are given.
"""

import contextlib
import json
import os
import sys

from absl import app, flags, logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (TensorBoard, tfds) start-up chatter

flags.DEFINE_string('workdir', None, 'A workdir written by experiments.train, or several, '
                    'comma-separated, whose adapters share one base model.')
flags.DEFINE_string('input', '-', 'Text file, one example per line ("-" = stdin).')
flags.DEFINE_string('output', '-', 'JSONL output file ("-" = stdout).')
flags.DEFINE_integer('batch_size', 64, 'Examples per forward pass.')
flags.DEFINE_string('adapter', None, 'With several workdirs: the adapter that labels every line.')
flags.DEFINE_bool('adapter_column', False, 'With several workdirs: each line is '
                  '"<adapter name>\\t<text>" and runs with its own adapter.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def _open(path: str, mode: str):
  if path == '-':
    return contextlib.nullcontext(sys.stdin if mode == 'r' else sys.stdout)
  return open(path, mode, encoding='utf-8')


def _parse(line: str):
  return tuple(line.split('\t', 1)) if '\t' in line else line


def read_inputs(path: str, adapter_column: bool = False) -> tuple[list, list | None]:
  """Texts (or pairs), and with `adapter_column` the adapter name of each line."""
  with _open(path, 'r') as stream:
    lines = [line.rstrip('\n') for line in stream if line.strip()]
  if not adapter_column:
    return [_parse(line) for line in lines], None
  names, texts = [], []
  for number, line in enumerate(lines, 1):
    name, tab, rest = line.partition('\t')
    if not tab:
      raise app.UsageError(f'{path} line {number}: expected "<adapter>\\t<text>" with '
                           '--adapter_column.')
    names.append(name)
    texts.append(_parse(rest))
  return texts, names


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from adapters_jax.host_memory import reuse_freed_host_memory
  reuse_freed_host_memory()  # first: before TensorFlow or JAX start their threads
  from adapters_jax.inference import MultiPredictor, Predictor

  workdirs = [w for w in FLAGS.workdir.split(',') if w]
  several = len(workdirs) > 1 or FLAGS.adapter or FLAGS.adapter_column
  if FLAGS.adapter and FLAGS.adapter_column:
    raise app.UsageError('Give --adapter or --adapter_column, not both.')
  texts, names = read_inputs(FLAGS.input, FLAGS.adapter_column)
  if not several:
    predictions = Predictor.from_workdir(workdirs[0], batch_size=FLAGS.batch_size).predict(texts)
  else:
    predictor = MultiPredictor.from_workdirs(workdirs, batch_size=FLAGS.batch_size)
    if not FLAGS.adapter and not FLAGS.adapter_column:
      if len(predictor.names) > 1:
        raise app.UsageError(f'Several adapters {list(predictor.names)}: choose one with '
                             '--adapter=NAME or name one per line with --adapter_column.')
      names = None
    predictions = predictor.predict(texts, adapter=None if names else
                                    (FLAGS.adapter or predictor.names[0]), adapters=names)
  with _open(FLAGS.output, 'w') as out:
    for text, prediction in zip(texts, predictions, strict=True):
      out.write(json.dumps({'text': text, **prediction}) + '\n')


if __name__ == '__main__':
  app.run(main)
