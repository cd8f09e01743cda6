r"""AdapterFusion on GLUE (Pfeiffer et al. 2021, Table 1 setting, GLUE part), through tfds.

Stage 1 trains one Pfeiffer adapter per GLUE task (ST-A); stage 2 fuses all of them for each target
task (ST-A + Fusion: only the fusion layers and a new head train, lr 5e-5, 10 epochs as in the
paper; adapters lr 1e-4, reduction factor 16):

  for t in mnli qqp sst2 cola mrpc stsb rte qnli; do
    python -m experiments.train --config=experiments/configs/fusion_glue.py:adapter-$t \
        --workdir=workdirs/fusion_glue/adapter-$t
  done
  python -m experiments.fuse --config=experiments/configs/fusion_glue.py:fusion-rte \
      --workdir=workdirs/fusion_glue/fusion-rte

GLUE comes from tensorflow-datasets (downloaded on first use; --config.data_dir to reuse a copy).
Hardware: one GPU/TPU host for BERT-base (`--config.model=bert-base-uncased`); the default packaged
MiniLM-L6 runs anywhere. Expected (paper, BERT-base): fusion >= single-task adapters on the small
tasks (RTE, MRPC, STS-B), about equal on the large ones. Not run here (no GLUE files offline); the
tests run it on `tfds.testing.mock_data` with a tiny BERT (`:smoke`).

Arguments: `adapter-<task>` or `fusion-<task>`, optionally with `,smoke` (a few steps).
"""

from experiments.configs.common import base_config

TASKS = ('mnli', 'qqp', 'sst2', 'cola', 'mrpc', 'stsb', 'rte', 'qnli')
ROOT = 'workdirs/fusion_glue'
CONFIG_ARGS = tuple(f'{kind}-{task}' for kind in ('adapter', 'fusion') for task in TASKS) + (
    'fusion-rte,smoke',)


def sweep() -> list[str]:
  """Every stage: all adapters first, then one fusion per target task."""
  return [f'adapter-{t}' for t in TASKS] + [f'fusion-{t}' for t in TASKS]


def get_config(arg: str = 'fusion-rte'):
  stage, _, option = (arg or 'fusion-rte').partition(',')
  kind, _, task = stage.partition('-')
  if kind not in ('adapter', 'fusion') or task not in TASKS or option not in ('', 'smoke'):
    raise ValueError(f'Unknown fusion_glue argument {arg!r}; valid: adapter-<task> or '
                     f'fusion-<task> (optionally ",smoke") with task in {TASKS}.')
  config = base_config()
  config.model = 'minilm-l6'
  config.task = task
  config.max_length = 128
  config.batch_size = 32
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  if kind == 'adapter':
    config.method = 'pfeiffer'
    config.learning_rate = 1e-4
    config.num_epochs = 10.0 if task in ('rte', 'mrpc', 'stsb', 'cola') else 3.0
  else:
    config.method = 'fusion'
    config.learning_rate = 5e-5
    config.num_epochs = 10.0 if task in ('rte', 'mrpc', 'stsb', 'cola') else 3.0
    config.method_options.adapter_dirs = tuple(f'{ROOT}/adapter-{t}/best' for t in TASKS)
    config.method_options.temperature = 1.0
    config.method_options.dropout = 0.1
    config.method_options.regularization = 0.01
  if option == 'smoke':
    config.max_length = 32
    config.max_train_examples = 32
    config.max_eval_examples = 16
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 4
    config.eval_every_steps = 2
    config.log_every_steps = 1
    config.learning_rate = 1e-3
    config.tensorboard = False
  return config
