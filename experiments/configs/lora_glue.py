r"""Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Table 2, the RoBERTa-base
rows: GLUE validation scores of LoRA (r=8 on the query and value projections) vs full fine-tuning.

Commands:
  python -m experiments.sweep --config=experiments/configs/lora_glue.py --sweep_dir=sweeps/lora_glue \
      --launcher=slurm                                  # or local / print; --only=method=lora
  python -m experiments.report --sweep_dir=sweeps/lora_glue --config=experiments/configs/lora_glue.py
One run by hand (the grid's first point):
  python -m experiments.train --config=experiments/configs/lora_glue.py --workdir=workdirs/mnli_lora \
      --config.task=mnli --config.method=lora --config.learning_rate=5e-4 --config.num_epochs=30 \
      --config.batch_size=16 --config.eval_every_steps=2000 --config.checkpoint_every_steps=2000 \
      --config.seed=0

LoRA hyperparameters (paper appendix D, Table 9, RoBERTa-base; the same values are in the authors'
`examples/NLU/roberta_base_<task>.sh` scripts in github.com/microsoft/LoRA): AdamW, linear schedule,
warmup ratio 0.06, weight decay 0.1, r=8, alpha=16, max length 512, classifier head trained,
per task (batch, epochs, learning rate): MNLI (16, 30, 5e-4), SST-2 (16, 60, 5e-4), MRPC
(16, 30, 4e-4), CoLA (32, 80, 4e-4), QNLI (32, 25, 4e-4), QQP (16, 25, 5e-4), RTE (32, 80, 5e-4),
STS-B (16, 40, 4e-4); 5 seeds, the paper reports the median. Differences from the paper: the
authors start MRPC, RTE and STS-B from the MNLI-trained LoRA weights (their scripts pass
--lora_path); we start every task from scratch, which costs RTE and MRPC a few points. The report
gives mean ± std over seeds, not the median.
Full fine-tuning (the paper copies Liu et al. 2019): the RoBERTa recipe, learning rate
{1e-5, 2e-5, 3e-5} x batch {16, 32}, 10 epochs, warmup 0.06, weight decay 0.1, 5 seeds.
AdptD (AdapterDrop, Rücklé et al. 2020) is a paper row only; it is not in our grid.

Hardware and time: GPU or TPU. RoBERTa-base at length 512 is dominated by MNLI/QQP/SST-2 (25-60
epochs of 67k-393k examples): on one A100 roughly 20-40 GPU hours each for MNLI and QQP, the 40
LoRA runs some 300-500 GPU hours and the 240 fine-tuning runs more. Start with --only=task=rte.

Paper numbers (Table 2, validation; CoLA Matthews, STS-B Pearson, accuracy elsewhere):
  FT (125M): MNLI 87.6, SST-2 94.8, MRPC 90.2, CoLA 63.6, QNLI 92.8, QQP 91.9, RTE 78.7, STS-B 91.2,
    avg 86.4
  AdptD (0.3M): 87.1, 94.2, 88.5, 60.8, 93.1, 90.2, 71.5, 89.7, avg 84.4
  LoRA (0.3M): 87.5, 95.1, 89.7, 63.4, 93.3, 90.8, 86.6, 91.5, avg 87.2
(each average is the mean of its eight columns.)
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config
from adapters_jax.sweeps.report import Column
from experiments.configs._glue_table import every, paper_numbers

CONFIG_ARGS = ('', 'smoke', 'task=stsb')

MODEL = 'FacebookAI/roberta-base'
SEEDS = (0, 1, 2, 3, 4)
# task -> (batch size, epochs, learning rate), paper Table 9.
LORA_HPARAMS = {
    'mnli': (16, 30, 5e-4), 'sst2': (16, 60, 5e-4), 'mrpc': (16, 30, 4e-4),
    'cola': (32, 80, 4e-4), 'qnli': (32, 25, 4e-4), 'qqp': (16, 25, 5e-4),
    'rte': (32, 80, 5e-4), 'stsb': (16, 40, 4e-4),
}
FINETUNE_RATES = (1e-5, 2e-5, 3e-5)
FINETUNE_BATCHES = (16, 32)
FINETUNE_EPOCHS = 10
# Steps between evaluations (and checkpoints), about once per epoch at batch 16, at most 2000.
EVAL_EVERY = {'mnli': 2000, 'sst2': 1000, 'mrpc': 250, 'cola': 500, 'qnli': 2000, 'qqp': 2000,
              'rte': 200, 'stsb': 400}

TITLE = 'Hu et al. 2021 (LoRA), Table 2, RoBERTa-base'
FT, ADPTD, LORA = 'FT', 'AdptD (0.3M)', 'LoRA (0.3M)'
COLUMNS = (
    Column('MNLI', 'mnli', 'accuracy'), Column('SST-2', 'sst2', 'accuracy'),
    Column('MRPC', 'mrpc', 'accuracy'), Column('CoLA', 'cola', 'matthews'),
    Column('QNLI', 'qnli', 'accuracy'), Column('QQP', 'qqp', 'accuracy'),
    Column('RTE', 'rte', 'accuracy'), Column('STS-B', 'stsb', 'pearson'),
)
PAPER = paper_numbers(COLUMNS, {
    FT: (87.6, 94.8, 90.2, 63.6, 92.8, 91.9, 78.7, 91.2, 86.4),
    ADPTD: (87.1, 94.2, 88.5, 60.8, 93.1, 90.2, 71.5, 89.7, 84.4),
    LORA: (87.5, 95.1, 89.7, 63.4, 93.3, 90.8, 86.6, 91.5, 87.2),
})
PAPER_PARAMS = {FT: '125M (100%)', ADPTD: '0.3M', LORA: '0.3M (0.24%)'}
LABELS = (FT, ADPTD, LORA)
REPORT_NOTES = ('Both sides are GLUE validation scores. The paper reports the median over 5 '
                'seeds and starts LoRA on MRPC, RTE and STS-B from its MNLI weights; we report '
                'mean ± std and start every task from RoBERTa-base.')


def get_config(arg: str = ''):
  """The base run; `arg`: see `adapters_jax.config.arguments`."""
  config = run_config()
  config.update(model=MODEL, task='mnli', method='lora', method_options={'rank': 8, 'alpha': 16.0},
                max_length=512, batch_size=16, learning_rate=5e-4, num_epochs=30.0,
                warmup_ratio=0.06, weight_decay=0.1, **every(2000))
  return parse_config_arg(arg).apply(config)


def method_label(config: dict) -> str:
  return FT if config['method'] == 'full' else LORA


def sweep():
  grid = []
  for task, (batch, epochs, rate) in LORA_HPARAMS.items():
    for seed in SEEDS:
      grid.append({'task': task, 'method': 'lora', 'learning_rate': rate, 'num_epochs': epochs,
                   'batch_size': batch, **every(EVAL_EVERY[task]), 'seed': seed})
  for task in LORA_HPARAMS:
    for seed in SEEDS:
      for rate in FINETUNE_RATES:
        for batch in FINETUNE_BATCHES:
          grid.append({'task': task, 'method': 'full', 'learning_rate': rate,
                       'num_epochs': FINETUNE_EPOCHS, 'batch_size': batch,
                       **every(EVAL_EVERY[task]), 'seed': seed})
  return grid
