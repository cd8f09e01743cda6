r"""PEFT's method comparison on MetaMathQA (`method_comparison/MetaMathQA` in huggingface/peft):
Llama-3.2-3B trained on MetaMathQA with LoRA r32, DoRA, VeRA, (IA)3, prefix tuning and prompt
tuning as PEFT sets them, scored by GSM8K test accuracy of greedy generations.

Data: `meta-math/MetaMathQA` and `openai/gsm8k` (`main`) from the hub when `--config.data_dir` is
empty, else their files in the hub layout under it (`data.metamathqa`). Model: the hub's
`meta-llama/Llama-3.2-3B` (gated: accept its licence and log in with `huggingface-cli login`).

Commands:
  python -m experiments.sweep --config=experiments/configs/peft_metamathqa.py \
      --sweep_dir=sweeps/peft_metamathqa --launcher=slurm          # or local / print
  python -m experiments.report --sweep_dir=sweeps/peft_metamathqa \
      --config=experiments/configs/peft_metamathqa.py
A dry run (every run built and stepped once on a tiny random Llama and files in the hub format):
  python -m experiments.make_random_decoder --out_dir=workdirs/tiny_llama
  python -m experiments.sweep --config=experiments/configs/peft_metamathqa.py \
      --sweep_dir=sweeps/peft_metamathqa_dry --dry_run --dry_run_model=workdirs/tiny_llama \
      --config.data_dir=metamathqa-files --config.lm.max_new_tokens=8

Recipe, read from PEFT's `default_training_params.json`, `data.py`, `run.py`, `utils.py` and each
method's `experiments/<method>/<name>/{adapter_config,training_params}.json`: bfloat16, sequence
length 768, batch 4, 5,000 steps, AdamW (lr 1e-4, weight decay 0.1), 10% warmup, gradient norm
clipped at 1, seed 0; the loss covers the whole templated text
`Question: {query} Think step by step.\nAnswer:{response}`; evaluation on 50 GSM8K training
questions every 250 steps (batch 50) and on the 1,319 GSM8K test questions at the end; greedy
decoding of at most 300 new tokens; accuracy of the parsed final answer (`data.math_answers`).
Methods: LoRA r=32, alpha 64 on q_proj and v_proj (PEFT's Llama default); DoRA the same; VeRA
r=256, d_initial 0.1, projection seed 0, lr 1e-3; (IA)3 on k_proj, v_proj and the input of
down_proj; prefix tuning with 200 virtual tokens, no projection (our `prefix_tuning_flat` with
`positions='after_prefix'`: real tokens after the prefix, as its `past_key_values` puts them),
lr 1e-3; prompt tuning with 200 random virtual tokens at PEFT's two learning rates, 1e-4 (its
`default`) and 1e-3.
Differences: PEFT's schedule is cosine after the warmup, ours decays linearly; its test score is
the last step's model, ours the best validation step's (`select_metric=accuracy`, as on 50
questions it is noisy); its prefix and prompt vectors start from N(0, 1), ours from our presets'
inits; PEFT's train time excludes evaluation, our `wall_time_s` includes it. PEFT ran on one
NVIDIA L40S.

Published numbers (PEFT's `results/*.json`; GSM8K test accuracy, train seconds, trainable
parameters):
  LoRA r32 47.8, 942 s, 9.18M; DoRA r32 46.9, 1191 s, 9.29M; VeRA 35.4, 1011 s, 129K;
  (IA)3 31.1, 987 s, 287K; prefix tuning 18.6, 1014 s, 11.5M; prompt tuning 5.7 (lr 1e-4),
  1473 s, and 23.4 (lr 1e-3), 1480 s, 614K.
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config
from adapters_jax.sweeps.report import Column

CONFIG_ARGS = ('', 'smoke')

# label -> (method, method_options, learning_rate), as PEFT's experiment folders set them.
METHODS = {
    'LoRA r32': ('lora', {'rank': 32, 'alpha': 64.0}, 1e-4),
    'DoRA r32': ('dora', {'rank': 32, 'alpha': 64.0}, 1e-4),
    'VeRA r256': ('vera', {'rank': 256, 'd_initial': 0.1, 'projection_seed': 0}, 1e-3),
    '(IA)3': ('ia3', {}, 1e-4),
    'Prefix tuning (200)': ('prefix_tuning_flat', {'prefix_length': 200, 'positions': 'after_prefix'},
                            1e-3),
    'Prompt tuning (200, lr 1e-4)': ('prompt_tuning', {'length': 200}, 1e-4),
    'Prompt tuning (200, lr 1e-3)': ('prompt_tuning', {'length': 200}, 1e-3),
}
LABELS = tuple(METHODS)
# label -> (test accuracy, train seconds, trainable parameters) from PEFT's results/*.json.
PUBLISHED = {
    'LoRA r32': (0.4783927217589083, 941.9589897260084, 9175040),
    'DoRA r32': (0.46929492039423804, 1190.9068044749874, 9289728),
    'VeRA r256': (0.35405610310841545, 1011.4663998220021, 129024),
    '(IA)3': (0.310841546626232, 986.8135647129748, 286720),
    'Prefix tuning (200)': (0.18574677786201668, 1013.7632167550037, 11468800),
    'Prompt tuning (200, lr 1e-4)': (0.05686125852918878, 1472.9676504840172, 614400),
    'Prompt tuning (200, lr 1e-3)': (0.23426838514025777, 1480.4625943749998, 614400),
}

TITLE = 'PEFT method comparison, Llama-3.2-3B on MetaMathQA -> GSM8K (test)'
COLUMNS = (Column('GSM8K', 'metamathqa', 'accuracy'),)
PAPER = {('GSM8K', label): 100 * accuracy for label, (accuracy, _, _) in PUBLISHED.items()}
PAPER_PARAMS = {label: f'{params:,}' for label, (_, _, params) in PUBLISHED.items()}
PAPER_TRAIN_SECONDS = {label: seconds for label, (_, seconds, _) in PUBLISHED.items()}
PAPER_HARDWARE = 'one NVIDIA L40S, train time without evaluation'
REPORT_NOTES = ('PEFT reports the last step\'s model with a cosine schedule; ours is the best '
                'validation step with a linear decay. Our wall time includes evaluation.')


def get_config(arg: str = ''):
  """The LoRA r32 run; `sweep()` sets the others. `arg`: see `adapters_jax.config.arguments`."""
  config = run_config()
  method, options, learning_rate = METHODS['LoRA r32']
  config.update(
      model='meta-llama/Llama-3.2-3B', task='metamathqa',
      data_dir='', dtype='bfloat16', method=method, method_options=options,
      lm={'max_new_tokens': 300}, max_length=768, batch_size=4, eval_batch_size=50,
      num_train_steps=5000, eval_every_steps=250, checkpoint_every_steps=250,
      learning_rate=learning_rate, weight_decay=0.1, warmup_ratio=0.1, clip_norm=1.0, seed=0,
      select_metric='accuracy')
  return parse_config_arg(arg).apply(config)


def method_label(config: dict) -> str:
  for label, (method, options, learning_rate) in METHODS.items():
    if (config['method'] == method and config['learning_rate'] == learning_rate
        and all(config['method_options'].get(k) == v for k, v in options.items())):
      return label
  return config['method']


def sweep():
  """One run per PEFT experiment (seed 0, as PEFT)."""
  return [{'method': method, 'method_options': options, 'learning_rate': learning_rate}
          for method, options, learning_rate in METHODS.values()]
