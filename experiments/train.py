r"""Trains an adapter (or a baseline) and evaluates it.

  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=workdirs/quick
  python -m experiments.train --config=experiments/configs/glue.py:rte --workdir=workdirs/rte \
      --config.method=lora --config.learning_rate=5e-4

Rerunning the same command on a workdir with a checkpoint resumes it.
"""

import json
import os

from absl import app, flags, logging

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (TensorBoard, tfds) start-up chatter
from experiments import config_flag

config_flag.define_config_flag()
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from adapters_jax.host_memory import reuse_freed_host_memory
  reuse_freed_host_memory()  # first: before TensorFlow or JAX start their threads
  from adapters_jax.train.loop import train_and_evaluate  # after flags: keeps --help fast

  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO

  result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  summary = {
      'task': result['task'], 'method': result['method'], 'model': result['model'],
      'trainable_params': result['trainable_params'],
      'trainable_percent': round(result['trainable_percent'], 3),
      'best_step': result['best_step'],
      'validation': result['validation_metrics'], 'test': result['test_metrics'],
      'best_checkpoint': result['best_checkpoint'],
      'train_examples_per_second': round(result['train_examples_per_second'], 1),
  }
  logging.info('result: %s', summary)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
