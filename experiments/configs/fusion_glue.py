r"""AdapterFusion on GLUE (Pfeiffer et al. 2021, Table 1 setting, GLUE part), through tfds.

Stage 1 trains one Pfeiffer adapter per GLUE task (ST-A); stage 2 fuses all of them for each target
task (ST-A + Fusion: only the fusion layers and a new head train, lr 5e-5, 10 epochs as in the
paper; adapters lr 1e-4, reduction factor 16):

  python -m experiments.sweep --config=experiments/configs/fusion_glue.py \
      --sweep_dir=workdirs/fusion_glue --launcher=slurm     # or local / print; --only=task=rte

The sweep runs each fusion after the eight adapters it reads (a second Slurm wave). One stage by
hand (fusion stages read workdirs/fusion_glue/adapter-*/best):

  python -m experiments.train --config=experiments/configs/fusion_glue.py:adapter-rte \
      --workdir=workdirs/fusion_glue/adapter-rte
  python -m experiments.train --config=experiments/configs/fusion_glue.py:fusion-rte \
      --workdir=workdirs/fusion_glue/fusion-rte

GLUE comes from tensorflow-datasets (downloaded on first use; --config.data_dir to reuse a copy).
Hardware: one GPU/TPU host for BERT-base (`--config.model=bert-base-uncased`); the default packaged
MiniLM-L6 runs anywhere. Expected (paper, BERT-base): fusion >= single-task adapters on the small
tasks (RTE, MRPC, STS-B), about equal on the large ones. Not run here (no GLUE files offline); the
tests run it on `tfds.testing.mock_data` with a tiny BERT (`:smoke`).

Arguments: a row `adapter-<task>` or `fusion-<task>`, optionally with `,smoke` (a few steps) and
`key=value` items.
"""

from adapters_jax import sweeps
from adapters_jax.config import loading, schema
from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config

TASKS = ('mnli', 'qqp', 'sst2', 'cola', 'mrpc', 'stsb', 'rte', 'qnli')
SMALL_TASKS = ('rte', 'mrpc', 'stsb', 'cola')  # 10 epochs; 3 on the others
ROOT = 'workdirs/fusion_glue'
ROWS = tuple(f'{kind}-{task}' for kind in ('adapter', 'fusion') for task in TASKS)
CONFIG_ARGS = (*ROWS, 'fusion-rte,smoke')
FUSION_OPTIONS = {'temperature': 1.0, 'dropout': 0.1, 'regularization': 0.01}


def stage(kind: str, task: str, adapter_dirs=None) -> dict:
  """The overrides of one stage; a fusion reads `adapter_dirs` (one per task, in TASKS order)."""
  epochs = 10.0 if task in SMALL_TASKS else 3.0
  if kind == 'adapter':
    return {'task': task, 'method': 'pfeiffer', 'learning_rate': 1e-4, 'num_epochs': epochs}
  options = {'adapter_dirs': tuple(adapter_dirs), **FUSION_OPTIONS}
  return {'task': task, 'method': 'fusion', 'learning_rate': 5e-5, 'num_epochs': epochs,
          **{f'method_options.{k}': v for k, v in options.items()}}


def sweep() -> list[dict]:
  """All adapters, then one fusion per target task over the sweep's own adapters."""
  adapters = [stage('adapter', task) for task in TASKS]
  fusion_dirs = [sweeps.run_dir(point, 'best') for point in adapters]
  return adapters + [stage('fusion', task, fusion_dirs) for task in TASKS]


def get_config(arg: str = 'adapter-mnli'):
  """The row's stage on the schema's run (minilm-l6, length 128, batch 32)."""
  args = parse_config_arg(arg, ROWS, default_row='adapter-mnli')
  kind, _, task = args.row.partition('-')
  config = run_config()
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  adapter_dirs = [f'{ROOT}/adapter-{t}/best' for t in TASKS]
  loading.apply_overrides(config, stage(kind, task, adapter_dirs), schema.OPEN_FIELDS)
  if args.smoke:
    config.learning_rate = 1e-3
  return args.apply(config, max_train_examples=32, max_eval_examples=16, eval_batch_size=8,
                    num_train_steps=4)
