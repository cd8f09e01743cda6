r"""Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", Table 3, the LoRA rows and
the prefix-tuning row: GPT-2 Medium and Large fine-tuned with LoRA, and GPT-2 Medium with prefix
tuning (Li & Liang 2021; the table's "PreLayer" row, copied from their paper), on the E2E NLG
challenge, scored on its test set.

Data: the challenge's files (`trainset.csv`, `devset.csv`, `testset_w_refs.csv`, from
github.com/tuetschek/e2e-dataset) in `--config.data_dir`. Models: the hub's GPT-2 checkpoints
(`openai-community/gpt2-medium`, `openai-community/gpt2-large`), downloaded on first use.

Commands:
  python -m experiments.sweep --config=experiments/configs/lora_e2e.py --sweep_dir=sweeps/lora_e2e \
      --launcher=slurm --config.data_dir=e2e-dataset          # or local / print
  python -m experiments.report --sweep_dir=sweeps/lora_e2e --config=experiments/configs/lora_e2e.py
The prefix-tuning row alone:
  python -m experiments.sweep --config=experiments/configs/lora_e2e.py --sweep_dir=sweeps/lora_e2e \
      --launcher=local --only=method=prefix_tuning --config.data_dir=e2e-dataset
A dry run (every run built and stepped once on a tiny random Llama and the miniature E2E files):
  python -m experiments.make_random_decoder --out_dir=workdirs/tiny_llama
  python -m experiments.sweep --config=experiments/configs/lora_e2e.py --sweep_dir=sweeps/lora_e2e_dry \
      --dry_run --dry_run_model=workdirs/tiny_llama --config.data_dir=experiments/data/mini_e2e
One run by hand (GPT-2 M, seed 0):
  python -m experiments.train --config=experiments/configs/lora_e2e.py --workdir=workdirs/e2e_m \
      --config.data_dir=e2e-dataset --config.seed=0

Recipe, checked against the authors' `examples/NLG/README.md` command lines in
github.com/microsoft/LoRA: LoRA r=4 on the attention query and value projections, alpha 32, LoRA
dropout 0.1; AdamW (weight decay 0.01, beta2 0.999), learning rate 2e-4, linear schedule with 500
warmup steps (0.019 of the 26,289 steps, as `warmup_ratio`), no gradient clipping (`--clip 0.0`);
batch 8, 5 epochs, label smoothing 0.1, sequence length 512; at inference at most 64 new tokens
(`--eval_len 64`). Prompt: the MR as `name : X | Type : pub | ...` then ` ||` (the authors'
data files), completion the reference then the tokenizer's EOS.
Decoding as the authors' command: beam search with 10 beams, length penalty 0.8, no repeated
4-gram (`models.beam_search`, equal to transformers' `generate(num_beams=...)`); the paper's
appendix table gives length penalty 0.9 for E2E, not checked here. Differences: METEOR is not
computed (no offline METEOR, see `data.text_metrics`), and ROUGE-L comes from rouge-score (the
challenge's script uses COCO's ROUGE-L), so that column moves slightly. The best checkpoint is
chosen on validation BLEU, evaluated once per epoch (the authors take the last).

Prefix row (`method=prefix_tuning`, GPT-2 M, seeds 0-2), Li & Liang 2021's E2E setting:
prefix length 5, learning rate 8e-5, 5 epochs, batch 10 (the E2E row of the paper's appendix
table of hyperparameters; the authors' `gpt2/train_e2e.py` in github.com/XiangLi1999/PrefixTuning
defaults to length 10, lr 5e-5, batch 10, 5 epochs, the paper's section 5 "default setting" is 10
epochs, batch 5, lr 5e-5, length 10); the reparameterisation of the authors' `train_control.py`:
an embedding of the P positions -> Linear(1024, 512) -> tanh -> Linear(512, 24 x 2 x 1024)
(`--mid_dim` 512 is the GPT-2 default there; 800 is their BART/XSUM command), no prefix dropout;
AdamW without weight decay (`--weight_decay 0.0`), linear schedule without warmup, gradient
clipping at 1.0 (the Hugging Face Trainer defaults their `run_language_modeling.py` keeps), no
label smoothing; decoding by beam search with 5 beams (the paper's table-to-text setting),
length penalty 1, no n-gram blocking. The paper counts the folded prefix (0.1%: P x 24 layers x
2 x 1024); training also updates the MLP (~25.7M), as theirs.

Hardware and time: a GPU; not measured here (no GPU and no network on the machine this was
written on; the dry run above builds and steps every run on a tiny stand-in). A run is 26,289
steps of 8 x <=512 tokens plus beam-search decoding (10 beams) of the 547 validation MRs per
epoch and the 630 test MRs at the end.

Paper numbers (Table 3, E2E test, the paper's +- omitted; BLEU, NIST, METEOR, ROUGE-L, CIDEr):
  GPT-2 M (LoRA, 0.35M): 70.4, 8.85, 46.8, 71.8, 2.53
  GPT-2 L (LoRA, 0.77M): 70.4, 8.89, 46.8, 72.0, 2.47
  GPT-2 M (PreLayer, 0.35M): 69.7, 8.81, 46.1, 71.4, 2.49 (Li & Liang 2021, Table 1, prefix 0.1%)
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config
from adapters_jax.sweeps.report import Column
from experiments.configs._glue_table import every

CONFIG_ARGS = ('', 'smoke', 'model=openai-community/gpt2-large')

MODELS = {'openai-community/gpt2-medium': 'GPT-2 M (LoRA)',
          'openai-community/gpt2-large': 'GPT-2 L (LoRA)'}
PREFIX = 'GPT-2 M (PreLayer)'
SEEDS = (0, 1, 2)
TRAIN_PAIRS = 42061
STEPS_PER_EPOCH = -(-TRAIN_PAIRS // 8)  # 5258
# Li & Liang 2021's E2E run (module docstring): method, options and schedule of the prefix row.
PREFIX_BATCH = 10
PREFIX_RUN = {
    'model': 'openai-community/gpt2-medium', 'method': 'prefix_tuning',
    'method_options': {'prefix_length': 5, 'bottleneck_size': 512},
    'learning_rate': 8e-5, 'num_epochs': 5.0, 'batch_size': PREFIX_BATCH, 'warmup_ratio': 0.0,
    'weight_decay': 0.0, 'clip_norm': 1.0, 'lm.label_smoothing': 0.0, 'lm.num_beams': 5,
    'lm.length_penalty': 1.0, 'lm.no_repeat_ngram_size': 0,
    **every(-(-TRAIN_PAIRS // PREFIX_BATCH))}

TITLE = 'Hu et al. 2021 (LoRA), Table 3, GPT-2 on E2E NLG (test)'
COLUMNS = (Column('BLEU', 'e2e_nlg', 'bleu'), Column('NIST', 'e2e_nlg', 'nist'),
           Column('ROUGE-L', 'e2e_nlg', 'rouge_l'), Column('CIDEr', 'e2e_nlg', 'cider'))
_PAPER_ROWS = {'GPT-2 M (LoRA)': (70.4, 8.85, 71.8, 2.53), 'GPT-2 L (LoRA)': (70.4, 8.89, 72.0, 2.47),
               PREFIX: (69.7, 8.81, 71.4, 2.49)}
PAPER = {(column.name, label): score for label, row in _PAPER_ROWS.items()
         for column, score in zip(COLUMNS, row, strict=True)}
PAPER_METEOR = {'GPT-2 M (LoRA)': 46.8, 'GPT-2 L (LoRA)': 46.8, PREFIX: 46.1}  # not computed here
PAPER_PARAMS = {'GPT-2 M (LoRA)': '0.35M', 'GPT-2 L (LoRA)': '0.77M', PREFIX: '0.35M'}
LABELS = (*MODELS.values(), PREFIX)
REPORT_NOTES = ('METEOR (paper: LoRA 46.8 for both models, PreLayer 46.1) is not computed offline; '
                'ROUGE-L comes from rouge-score, not the challenge\'s COCO script. PreLayer is '
                'Li & Liang\'s prefix tuning in their E2E setting (prefix length 5, MLP 512).')


def get_config(arg: str = ''):
  """The base run (the schema's weight decay 0.01 and 64 new tokens are the authors'); `arg`: see
  `adapters_jax.config.arguments`."""
  config = run_config()
  config.update(
      model='openai-community/gpt2-medium', task='e2e_nlg', data_dir='e2e-dataset',
      method='lora', method_options={'rank': 4, 'alpha': 32.0, 'dropout': 0.1},
      lm={'label_smoothing': 0.1, 'num_beams': 10, 'length_penalty': 0.8,
          'no_repeat_ngram_size': 4},
      max_length=512, batch_size=8, eval_batch_size=16, learning_rate=2e-4, num_epochs=5.0,
      warmup_ratio=500 / (5 * STEPS_PER_EPOCH), clip_norm=0.0, select_metric='bleu',
      **every(STEPS_PER_EPOCH))
  return parse_config_arg(arg).apply(config)


def method_label(config: dict) -> str:
  if config['method'] == 'prefix_tuning':
    return PREFIX
  return MODELS.get(config['model'], config['model'])


def sweep():
  """LoRA: 2 models x 3 seeds; prefix tuning: GPT-2 M x 3 seeds."""
  lora = [{'model': model, 'seed': seed} for model in MODELS for seed in SEEDS]
  return lora + [{**PREFIX_RUN, 'seed': seed} for seed in SEEDS]
