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
from adapters_jax.config import overrides as config_args
from experiments.configs.common import OPEN_FIELDS, base_config, smoke

TASKS = ('rotten_tomatoes', 'tweet_sentiment')
ROOT = 'workdirs/mini_fusion'
KINDS = ('adapter', 'full', 'fusion')
CONFIG_ARGS = tuple(f'{kind}-{task}' for kind in KINDS for task in TASKS) + (
    'fusion-rotten_tomatoes,smoke',)
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
  name, _, option = (arg or 'adapter-rotten_tomatoes').partition(',')
  kind, _, task = name.partition('-')
  if kind not in KINDS or task not in TASKS or option not in ('', 'smoke'):
    raise ValueError(f'Unknown mini_fusion stage {arg!r}; valid stages: <kind>-<task> with kind '
                     f'in {KINDS}, task in {TASKS}, optionally ",smoke".')
  config = base_config()
  config.model = 'minilm-l6'
  config.max_length = 64
  config.max_train_examples = 3000
  config.max_eval_examples = 1000
  config.batch_size = 32
  config.num_epochs = 2.0
  config.eval_every_steps = 94
  config.checkpoint_every_steps = 94
  config.log_every_steps = 20
  config.tensorboard = False
  if option == 'smoke':
    smoke(config)
  adapter_dirs = [f'{ROOT}/adapter-{t}/best' for t in TASKS]
  return config_args.apply_overrides(config, stage(kind, task, adapter_dirs), OPEN_FIELDS)
