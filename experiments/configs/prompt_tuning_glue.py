r"""Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning" (EMNLP 2021):
prompt tuning on T5 (v1.1, LM-adapted) with every GLUE task as text-to-text, against full
fine-tuning, over the paper's prompt lengths.

Commands:
  python -m experiments.sweep --config=experiments/configs/prompt_tuning_glue.py \
      --sweep_dir=sweeps/prompt_tuning_glue --launcher=slurm     # or local / print; --only=task=rte
  python -m experiments.report --sweep_dir=sweeps/prompt_tuning_glue \
      --config=experiments/configs/prompt_tuning_glue.py
  python -m experiments.sweep --config=experiments/configs/prompt_tuning_glue.py \
      --sweep_dir=/tmp/dry --dry_run --dry_run_model=random-t5   # a small random T5 stand-in
One run by hand (the grid's first prompt-tuning point):
  python -m experiments.train --config=experiments/configs/prompt_tuning_glue.py \
      --workdir=workdirs/p --config.task=rte --config.method_options.length=100 --config.seed=0

Setting, and where each value comes from (the paper's Sec. 2-3 and Appendix A):
  * T5 v1.1 "LM-adapted" checkpoints (`google/t5-base-lm-adapt`): the paper's recommended start,
    trained 100k more steps as a language model; every task as T5's text-to-text
    (`task_kind=seq2seq`: the prefixes and label words of Raffel et al. 2020), greedy decoding.
  * Prompt: 100 vectors in front of the encoder input (`combine='prefix'`), initialised from the
    embeddings of tokens sampled from the vocabulary (`init='sample_vocab'`; the paper samples
    the 5,000 most common tokens, we sample all of them); the model is frozen, no head trains.
  * Learning rate 0.3, batch 32, 30,000 steps, checkpoint selected on validation every 1,000
    steps (the paper: Adafactor, lr 0.3, batch 32, 30k steps; we use the schema's AdamW with no
    weight decay and linear decay after 1% warmup, so the learning rate is not exactly theirs).
  * Prompt lengths 1, 5, 20, 100, 150 (the paper's Figure 3 ablation); one seed.
Not the paper's table: the paper reports SuperGLUE, not GLUE; this config applies its recipe to
the GLUE tasks the other paper tables here use (split as Compacter's `validation_as_test`
scheme: tasks under 10k training examples halve the validation split into validation and test).
`PAPER` is empty: there are no GLUE numbers in the paper to copy.

Hardware and time: GPU. T5-base at batch 32 x 128 tokens, encoder 100 tokens longer: roughly
1-2 hours per 30k-step run on one A100; 8 tasks x (1 + 5) runs some 50-100 GPU hours. Full
fine-tuning (lr 1e-4) is the reference row. Start with --only=task=rte.
GLUE is downloaded by tensorflow-datasets on first use (set --config.data_dir to share a copy).
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config
from adapters_jax.sweeps.report import Column
from experiments.configs._glue_table import every

CONFIG_ARGS = ('', 'smoke', 'task=mrpc')

MODEL = 'google/t5-base-lm-adapt'
TASKS = ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'qnli', 'rte')
SEEDS = (0,)
BATCH = 32
STEPS = 30_000
EVAL_EVERY = 1_000
PROMPT_RATE = 0.3
FT_RATE = 1e-4
PROMPT_LENGTHS = (1, 5, 20, 100, 150)
PROMPT_OPTIONS = {'length': 100, 'init': 'sample_vocab', 'combine': 'prefix'}
FT = 'T5-base LM-adapted (fine-tuning)'

TITLE = 'Lester et al. 2021 (prompt tuning) on GLUE with T5-base LM-adapted'
COLUMNS = (
    Column('CoLA', 'cola', 'matthews'), Column('SST-2', 'sst2', 'accuracy'),
    Column('MRPC', 'mrpc', 'f1'), Column('QQP', 'qqp', 'f1'),
    Column('STS-B', 'stsb', 'pearson'), Column('MNLI', 'mnli', 'accuracy', 'validation',
                                               'test_matched'),
    Column('QNLI', 'qnli', 'accuracy'), Column('RTE', 'rte', 'accuracy'),
)
PAPER = {}  # the paper reports SuperGLUE; see the module docstring
LABELS = (FT, *(f'Prompt tuning, P={length}' for length in PROMPT_LENGTHS))
REFERENCE = FT
REPORT_NOTES = ('Test scores on the original GLUE validation split (halved for tasks under 10k '
                'training examples), one seed per cell; no paper numbers (the paper reports '
                'SuperGLUE).')


def get_config(arg: str = ''):
  """The base run: prompt tuning with P=100 on CoLA; `arg`: see `adapters_jax.config.arguments`."""
  config = run_config()
  config.update(model=MODEL, task='cola', task_kind='seq2seq', split_scheme='validation_as_test',
                method='prompt_tuning', method_options=dict(PROMPT_OPTIONS), train_head=False,
                batch_size=BATCH, eval_batch_size=BATCH, learning_rate=PROMPT_RATE,
                num_train_steps=STEPS, warmup_ratio=0.01, weight_decay=0.0, **every(EVAL_EVERY))
  return parse_config_arg(arg).apply(config)


def method_label(config: dict) -> str:
  if config['method'] == 'full':
    return FT
  return f"Prompt tuning, P={config['method_options']['length']}"


def sweep():
  grid = []
  for task in TASKS:
    for seed in SEEDS:
      grid.append({'task': task, 'method': 'full', 'learning_rate': FT_RATE, 'seed': seed})
      for length in PROMPT_LENGTHS:
        grid.append({'task': task, 'method': 'prompt_tuning', 'method_options.length': length,
                     'learning_rate': PROMPT_RATE, 'seed': seed})
  return grid
