r"""Labels texts with a trained run (base model + its best adapter checkpoint).

  echo "A quiet, devastating film." | python -m experiments.predict --workdir=workdirs/quickstart
  python -m experiments.predict --workdir=workdirs/rte --input=pairs.tsv --output=labels.jsonl

Input: one text per line; for pair tasks two texts separated by a tab. Output: one JSON object per
line with the text, the label and the class probabilities (or the score for regression).
"""

import contextlib
import json
import sys

from absl import app, flags, logging

flags.DEFINE_string('workdir', None, 'A workdir written by experiments.train.')
flags.DEFINE_string('input', '-', 'Text file, one example per line ("-" = stdin).')
flags.DEFINE_string('output', '-', 'JSONL output file ("-" = stdout).')
flags.DEFINE_integer('batch_size', 64, 'Examples per forward pass.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def _open(path: str, mode: str):
  if path == '-':
    return contextlib.nullcontext(sys.stdin if mode == 'r' else sys.stdout)
  return open(path, mode, encoding='utf-8')


def read_inputs(path: str) -> list:
  with _open(path, 'r') as stream:
    lines = [line.rstrip('\n') for line in stream if line.strip()]
  return [tuple(line.split('\t', 1)) if '\t' in line else line for line in lines]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from adapters_jax.inference import Predictor

  predictor = Predictor.from_workdir(FLAGS.workdir, batch_size=FLAGS.batch_size)
  texts = read_inputs(FLAGS.input)
  with _open(FLAGS.output, 'w') as out:
    for text, prediction in zip(texts, predictor.predict(texts), strict=True):
      out.write(json.dumps({'text': text, **prediction}) + '\n')


if __name__ == '__main__':
  app.run(main)
