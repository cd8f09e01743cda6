r"""Alias of `experiments.train`: AdapterFusion (Pfeiffer et al. 2021) trains like any method.

  python -m experiments.fuse --config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes \
      --workdir=workdirs/mini_fusion/fusion-rotten_tomatoes
  python -m experiments.fuse --config=experiments/configs/fusion_glue.py:fusion-rte \
      --workdir=workdirs/fusion_glue/fusion-rte

The adapters to fuse are `--config.method_options.adapter_dirs` (checkpoints written by
experiments.train, e.g. `<workdir>/best`). The run resumes, checkpoints and writes like any
experiments.train run (result.json, metrics.jsonl, best/ recording the fused adapters), plus
fusion_attention.png.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file (python), with an optional :arg.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the fusion checkpoint, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from experiments.training_run import run

  run(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
