r"""Trains AdapterFusion over frozen task adapters (Pfeiffer et al. 2021) and evaluates it.

  python -m experiments.fuse --config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes \
      --workdir=workdirs/mini_fusion/fusion-rotten_tomatoes
  python -m experiments.fuse --config=experiments/configs/fusion_glue.py:fusion-rte \
      --workdir=workdirs/fusion_glue/fusion-rte

The adapters to fuse are `--config.method_options.adapter_dirs` (checkpoints written by
experiments.train, e.g. `<workdir>/best`). Writes result.json, metrics.jsonl, best/ (the fusion
layers and head, recording the fused adapters) and fusion_attention.png to --workdir.
"""

import json

from absl import app, flags, logging

from experiments import config_flag

config_flag.define_config_flag()
flags.DEFINE_string('workdir', None, 'Directory for the fusion checkpoint, metrics and results.')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from adapters_jax.host_memory import reuse_freed_host_memory
  reuse_freed_host_memory()  # first: before TensorFlow or JAX start their threads
  from adapters_jax.fusion_train import train_and_evaluate  # after flags: keeps --help fast

  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
  keys = ('task', 'method', 'fused_adapters', 'trainable_params', 'trainable_percent', 'best_step',
          'validation_metrics', 'test_metrics', 'best_checkpoint', 'attention_plot',
          'train_examples_per_second')
  print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == '__main__':
  app.run(main)
