r"""Miniature AdapterFusion table on CPU: packaged `rotten_tomatoes` and `tweet_sentiment`.

Stages (the config argument), all on the packaged MiniLM-L6, max length 64, fixed subsets of 3,000
training and 1,000 validation / 1,000 test examples per task, 2 epochs:

  adapter-<task>   a Pfeiffer adapter (reduction 16) + head trained on <task> (experiments.train)
  full-<task>      full fine-tuning baseline (experiments.train)
  fusion-<task>    AdapterFusion over both frozen task adapters + a new head (experiments.fuse);
                   reads the adapters from workdirs/mini_fusion/adapter-*/best

Commands (one training process at a time; run from the repository root):

  for s in adapter-rotten_tomatoes adapter-tweet_sentiment full-rotten_tomatoes \
           full-tweet_sentiment; do
    python -m experiments.train --config=experiments/configs/mini_fusion.py:$s \
        --workdir=workdirs/mini_fusion/$s
  done
  for s in fusion-rotten_tomatoes fusion-tweet_sentiment; do
    python -m experiments.fuse --config=experiments/configs/mini_fusion.py:$s \
        --workdir=workdirs/mini_fusion/$s
  done

Hardware: 2 shared CPU cores. Run time: about 40-60 minutes for all six stages. Results (test
accuracy, trained parameters): docs/results/fusion_mini.md.
"""

from experiments.configs.common import base_config

TASKS = ('rotten_tomatoes', 'tweet_sentiment')
ROOT = 'workdirs/mini_fusion'
CONFIG_ARGS = tuple(f'{kind}-{task}' for kind in ('adapter', 'full', 'fusion') for task in TASKS)


def sweep() -> list[str]:
  """Every stage of the table, in the order they must run (adapters before fusion)."""
  return list(CONFIG_ARGS)


def get_config(arg: str = 'adapter-rotten_tomatoes'):
  kind, _, task = (arg or 'adapter-rotten_tomatoes').partition('-')
  if kind not in ('adapter', 'full', 'fusion') or task not in TASKS:
    raise ValueError(f'Unknown mini_fusion stage {arg!r}; valid stages: {list(CONFIG_ARGS)}.')
  config = base_config()
  config.model = 'minilm-l6'
  config.task = task
  config.max_length = 64
  config.max_train_examples = 3000
  config.max_eval_examples = 1000
  config.batch_size = 32
  config.num_epochs = 2.0
  config.eval_every_steps = 94
  config.checkpoint_every_steps = 94
  config.log_every_steps = 20
  config.tensorboard = False
  if kind == 'adapter':
    config.method = 'pfeiffer'
    config.learning_rate = 1e-3
  elif kind == 'full':
    config.method = 'full'
    config.learning_rate = 5e-5
  else:
    config.method = 'fusion'
    config.learning_rate = 5e-4
    config.method_options.adapter_dirs = tuple(f'{ROOT}/adapter-{t}/best' for t in TASKS)
    config.method_options.temperature = 1.0
    config.method_options.dropout = 0.1
    config.method_options.regularization = 0.01
  return config
