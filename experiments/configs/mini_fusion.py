r"""Miniature AdapterFusion table on CPU: packaged `rotten_tomatoes` and `tweet_sentiment`.

Stages, all on the packaged MiniLM-L6, max length 64, fixed subsets of 3,000 training and 1,000
validation / 1,000 test examples per task, 2 epochs:

  adapter-<task>   a Pfeiffer adapter (reduction 16) + head trained on <task>
  full-<task>      full fine-tuning baseline
  fusion-<task>    AdapterFusion over both frozen task adapters + a new head

The whole table, fusion runs after the adapters they read (`--launcher=local` waits for them;
`--launcher=print` prints them last; `--launcher=slurm` submits them as a second wave):

  python -m experiments.sweep --config=experiments/configs/mini_fusion.py \
      --sweep_dir=workdirs/mini_fusion --launcher=local

One stage by hand (the config argument is the stage; fusion stages read
workdirs/mini_fusion/adapter-*/best):

  python -m experiments.train --config=experiments/configs/mini_fusion.py:adapter-rotten_tomatoes \
      --workdir=workdirs/mini_fusion/adapter-rotten_tomatoes
  python -m experiments.train --config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes \
      --workdir=workdirs/mini_fusion/fusion-rotten_tomatoes

Hardware: 2 shared CPU cores. Run time: about 40-60 minutes for all six stages. Results (test
accuracy, trained parameters): docs/results/fusion_mini.md.
"""

from adapters_jax import sweeps
from adapters_jax.config import loading, schema
from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config

TASKS = ('rotten_tomatoes', 'tweet_sentiment')
ROOT = 'workdirs/mini_fusion'
KINDS = ('adapter', 'full', 'fusion')
ROWS = tuple(f'{kind}-{task}' for kind in KINDS for task in TASKS)
CONFIG_ARGS = (*ROWS, 'fusion-rotten_tomatoes,smoke')
FUSION_OPTIONS = {'temperature': 1.0, 'dropout': 0.1, 'regularization': 0.01}


def stage(kind: str, task: str, adapter_dirs=None) -> dict:
  """The overrides of one stage; a fusion reads `adapter_dirs` (one per task)."""
  if kind == 'adapter':
    return {'task': task, 'method': 'pfeiffer', 'learning_rate': 1e-3}
  if kind == 'full':
    return {'task': task, 'method': 'full', 'learning_rate': 5e-5}
  options = {'adapter_dirs': tuple(adapter_dirs), **FUSION_OPTIONS}
  return {'task': task, 'method': 'fusion', 'learning_rate': 5e-4,
          **{f'method_options.{k}': v for k, v in options.items()}}


def sweep() -> list[dict]:
  """Every stage; each fusion reads the sweep's own adapter runs."""
  adapters = [stage('adapter', task) for task in TASKS]
  fusion_dirs = [sweeps.run_dir(point, 'best') for point in adapters]
  return (adapters + [stage('full', task) for task in TASKS]
          + [stage('fusion', task, fusion_dirs) for task in TASKS])


def get_config(arg: str = 'adapter-rotten_tomatoes'):
  """The row's stage (`<kind>-<task>`), optionally `,smoke` and `key=value` items."""
  args = parse_config_arg(arg, ROWS, default_row='adapter-rotten_tomatoes')
  kind, _, task = args.row.partition('-')
  config = run_config()
  config.max_length = 64
  config.max_train_examples = 3000
  config.max_eval_examples = 1000
  config.num_epochs = 2.0
  config.eval_every_steps = 94
  config.checkpoint_every_steps = 94
  config.log_every_steps = 20
  config.tensorboard = False
  adapter_dirs = [f'{ROOT}/adapter-{t}/best' for t in TASKS]
  loading.apply_overrides(config, stage(kind, task, adapter_dirs), schema.OPEN_FIELDS)
  return args.apply(config)
