r"""General GLUE / local-file config: any task, any method, any model.

  python -m experiments.train --config=experiments/configs/glue.py:rte --workdir=workdirs/rte_houlsby
  python -m experiments.train --config=experiments/configs/glue.py:mrpc --workdir=workdirs/mrpc_lora \
      --config.method=lora --config.learning_rate=5e-4 --config.model=roberta-base
  python -m experiments.train --config=experiments/configs/glue.py:local --workdir=workdirs/mine \
      --config.local_task.paths.train=train.csv --config.local_task.paths.validation=dev.csv \
      --config.local_task.text_columns='("sentence",)' --config.local_task.label_names='("neg","pos")'

The argument is the task (a row: a GLUE name, `rotten_tomatoes`, `tweet_sentiment` or `local`;
other tasks as `task=e2e_nlg`), optionally with `,smoke` (a few steps, for tests) and `key=value`
items. Local files: `--config.local_task.encoding=latin-1` for
non-UTF-8 files, `--config.local_task.format=tsv` when the extension does not say,
`--config.local_task.test_has_labels=False` for unlabelled test files. GLUE data
comes from tensorflow-datasets (it downloads GLUE on first use; set --config.data_dir to reuse a
copy). Hardware: one GPU or TPU host for BERT-base/large; the packaged `minilm-l6` runs on CPU.
Defaults follow Houlsby et al. 2019: batch 32, length 128, 3 epochs, best on validation.
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config

ROWS = ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte', 'wnli', 'rotten_tomatoes',
        'tweet_sentiment', 'local')
CONFIG_ARGS = ('rte', 'mnli', 'stsb', 'rotten_tomatoes', 'local', 'rte,smoke', 'smoke,task=e2e_nlg')


def get_config(arg: str = 'rte'):
  """The schema's run (minilm-l6, houlsby, batch 32, length 128, 3 epochs) on the row's task."""
  args = parse_config_arg(arg, ROWS, default_row='rte')
  config = run_config()
  config.task = args.row
  config.learning_rate = 3e-4
  return args.apply(config)
