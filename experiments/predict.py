r"""Labels texts with trained runs (base model + best adapter checkpoints).

  echo "A quiet, devastating film." | python -m experiments.predict --workdir=workdirs/quickstart
  python -m experiments.predict --workdir=workdirs/rte --input=pairs.tsv --output=labels.jsonl

Several adapters over one base (comma-separated workdirs; the base is loaded once):

  python -m experiments.predict --workdir=workdirs/rt,workdirs/tweets --adapter=tweet_sentiment
  printf 'rotten_tomatoes\tA triumph.\ntweet_sentiment\tWaymo rocks\n' | \
      python -m experiments.predict --workdir=workdirs/rt,workdirs/tweets --adapter_column

A T5 (seq2seq) run answers in its label words; a decoder (causal LM) run continues prompts with
its own decoding settings (greedy, or beam search as its config's `lm` block says):

  echo "A quiet, devastating film." | python -m experiments.predict --workdir=workdirs/mini_t5
  echo "name[The Eagle], food[French]" | python -m experiments.predict --workdir=workdirs/mini_lm \
      --max_new_tokens=20

Input: one UTF-8 text per line (`\n` or `\r\n` endings); for pair tasks two texts separated by a
tab. With --adapter_column each line starts with the adapter's name and a tab (mixed rows run in
one batch). A T5 run writes each line as training wrote the task's inputs (its prefix and field
names). A decoder run takes a prompt per line: an E2E run an MR (`name[X], eatType[pub]`),
rendered as its training prompts; other runs the prompt text, or a JSON object `{"prompt": ...}` or
`{"messages": [...]}` (a chat the model answers, through the tokenizer's chat template).

Output: one JSON object per input line, in order. A blank line gets `{"text": "", "error": "blank
line"}`; empty input gets no output (and loads no model). Every other line gets the text and
  * encoder runs: the label and the class probabilities (or the score for regression), and the
    adapter when several workdirs are given;
  * T5 runs: `generated` (the decoded answer) and `label` (the label it names, or the score for
    STS-B); `label` null and `unparseable` true when the answer names no label;
  * decoder runs: `generated`, the text generated up to EOS (at most --max_new_tokens tokens).
Several workdirs must all be encoder runs.
"""

import json
import os
import sys

from absl import app, flags, logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (TensorBoard, tfds) start-up chatter
from experiments import compilation_cache, entry_point

flags.DEFINE_string('workdir', None, 'A workdir written by experiments.train, or several, '
                    'comma-separated, whose adapters share one base model.')
flags.DEFINE_string('input', '-', 'Text file, one example per line ("-" = stdin).')
flags.DEFINE_string('output', '-', 'JSONL output file ("-" = stdout).')
flags.DEFINE_integer('batch_size', 64, 'Examples per forward pass.')
flags.DEFINE_string('adapter', None, 'With several workdirs: the adapter that labels every line.')
flags.DEFINE_integer('max_new_tokens', None, 'Decoder runs: tokens generated per prompt at most '
                     '(default: the run\'s config.lm.max_new_tokens).')
flags.DEFINE_bool('adapter_column', False, 'With several workdirs: each line is '
                  '"<adapter name>\\t<text>" and runs with its own adapter.')
flags.mark_flags_as_required(['workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from adapters_jax.host_memory import reuse_freed_host_memory
  reuse_freed_host_memory()  # first: before TensorFlow or JAX start their threads
  compilation_cache.enable()

  workdirs = [w for w in FLAGS.workdir.split(',') if w]
  several = len(workdirs) > 1 or FLAGS.adapter or FLAGS.adapter_column
  if FLAGS.adapter and FLAGS.adapter_column:
    raise app.UsageError('Give --adapter or --adapter_column, not both.')
  if several and FLAGS.max_new_tokens is not None:
    raise app.UsageError('--max_new_tokens is for one decoder run; several workdirs are encoder '
                         'runs.')
  from adapters_jax.predict.inputs import BLANK_LINE, open_output, read_inputs
  from adapters_jax.predict.runs import check_workdir

  source = 'stdin' if FLAGS.input == '-' else FLAGS.input
  try:
    for workdir in workdirs:
      check_workdir(workdir)
  except FileNotFoundError as e:
    sys.exit(f'Cannot predict: {e}')
  try:
    texts, names = read_inputs(FLAGS.input, FLAGS.adapter_column)
  except OSError as e:
    sys.exit(f'Cannot read {source}: {e}')
  except ValueError as e:  # not UTF-8, or a line without its adapter column
    sys.exit(f'Cannot predict: {e}')
  given = [i for i, text in enumerate(texts) if text is not None]
  predictions = {}
  if given:
    try:
      found = _predict(workdirs, several, [texts[i] for i in given],
                       [names[i] for i in given] if names else None)
    except (ValueError, FileNotFoundError) as e:  # no run there, a run that cannot do this, or
      # a damaged run file
      sys.exit(f'Cannot predict with {FLAGS.workdir} on {source}: {e}')
    predictions = dict(zip(given, found, strict=True))
  with open_output(FLAGS.output) as out:
    for i, text in enumerate(texts):
      out.write(json.dumps({'text': text or '', **predictions.get(i, BLANK_LINE)}) + '\n')


def _predict(workdirs: list[str], several: bool, texts: list, names: list | None) -> list[dict]:
  from adapters_jax.predict.predictor import load_predictor
  from adapters_jax.predict.serving import load_adapter_server

  if not several:
    predictor = load_predictor(workdirs[0], batch_size=FLAGS.batch_size,
                               max_new_tokens=FLAGS.max_new_tokens)
    return predictor.predict(texts)
  server = load_adapter_server(workdirs, batch_size=FLAGS.batch_size)
  if not FLAGS.adapter and not FLAGS.adapter_column:
    if len(server.names) > 1:
      raise ValueError(f'several adapters {list(server.names)}: choose one with '
                       '--adapter=NAME or name one per line with --adapter_column')
    names = None
  return server.predict(texts, adapter=None if names else (FLAGS.adapter or server.names[0]),
                        adapters=names)


if __name__ == '__main__':
  entry_point.run(main)
