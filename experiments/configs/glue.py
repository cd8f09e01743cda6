r"""General GLUE / local-file config: any task, any method, any model.

  python -m experiments.train --config=experiments/configs/glue.py:rte --workdir=workdirs/rte_houlsby
  python -m experiments.train --config=experiments/configs/glue.py:mrpc --workdir=workdirs/mrpc_lora \
      --config.method=lora --config.learning_rate=5e-4 --config.model=roberta-base
  python -m experiments.train --config=experiments/configs/glue.py:local --workdir=workdirs/mine \
      --config.local_task.paths.train=train.csv --config.local_task.paths.validation=dev.csv \
      --config.local_task.text_columns='("sentence",)' --config.local_task.label_names='("neg","pos")'

The argument is the task (a GLUE name, `rotten_tomatoes`, `tweet_sentiment` or `local`), optionally
with `,smoke` (a few steps, for tests). Local files: `--config.local_task.encoding=latin-1` for
non-UTF-8 files, `--config.local_task.format=tsv` when the extension does not say,
`--config.local_task.test_has_labels=False` for unlabelled test files. GLUE data
comes from tensorflow-datasets (it downloads GLUE on first use; set --config.data_dir to reuse a
copy). Hardware: one GPU or TPU host for BERT-base/large; the packaged `minilm-l6` runs on CPU.
Defaults follow Houlsby et al. 2019: batch 32, length 128, 3 epochs, best on validation.
"""

from experiments.configs.common import base_config, smoke

CONFIG_ARGS = ('rte', 'mnli', 'stsb', 'rotten_tomatoes', 'local', 'rte,smoke')


def get_config(arg: str = 'rte'):
  task, _, option = (arg or 'rte').partition(',')
  if option not in ('', 'smoke'):
    raise ValueError(f'Unknown glue.py argument {arg!r}; valid: <task> or <task>,smoke.')
  config = base_config()
  config.task = task or 'rte'
  config.model = 'minilm-l6'
  config.method = 'houlsby'
  config.learning_rate = 3e-4
  config.batch_size = 32
  config.max_length = 128
  config.num_epochs = 3.0
  if option == 'smoke':
    smoke(config)
  return config
