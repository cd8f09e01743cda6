r"""Trains an adapter, an AdapterFusion or a baseline, and evaluates it.

  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=workdirs/quick
  python -m experiments.train --config=experiments/configs/glue.py:rte --workdir=workdirs/rte \
      --config.method=lora --config.learning_rate=5e-4
  python -m experiments.train --config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes \
      --workdir=workdirs/mini_fusion/fusion-rotten_tomatoes

Rerunning the same command on a workdir with a checkpoint resumes it; on a finished run it prints
the result and changes nothing. SIGTERM or Ctrl-C saves the current step and exits (0 or 130) with
one line; a second process on a live workdir is refused.
"""

import os

from absl import app, flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (TensorBoard, tfds) start-up chatter
from experiments import compilation_cache, config_flag, entry_point

config_flag.define_config_flag()
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from experiments.training_run import run

  compilation_cache.enable()
  run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  entry_point.run(main)
