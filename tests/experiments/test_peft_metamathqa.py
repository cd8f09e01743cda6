"""The PEFT MetaMathQA config plans one run per PEFT experiment, with PEFT's settings (read from
its `default_training_params.json` and each experiment's JSON files, restated here by hand)."""

import os

from adapters_jax import sweeps
from adapters_jax.config.schema import OPEN_FIELDS
from experiments.configs import peft_metamathqa

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, 'experiments', 'configs', 'peft_metamathqa.py')

# label -> (method, options that must be set, learning rate), from PEFT's experiment folders.
EXPECTED = {
    'LoRA r32': ('lora', {'rank': 32, 'alpha': 64.0}, 1e-4),                # lora/llama-3.2-3B-rank32
    'DoRA r32': ('dora', {'rank': 32, 'alpha': 64.0}, 1e-4),                # .../rank32-dora
    'VeRA r256': ('vera', {'rank': 256, 'd_initial': 0.1}, 1e-3),           # vera/llama-3.2-3B-default
    '(IA)3': ('ia3', {}, 1e-4),                                             # ia3/llama-3.2-3B-default
    'Prefix tuning (200)': ('prefix_tuning_flat', {'prefix_length': 200, 'positions': 'after_prefix'}, 1e-3),
    'Prompt tuning (200, lr 1e-4)': ('prompt_tuning', {'length': 200}, 1e-4),
    'Prompt tuning (200, lr 1e-3)': ('prompt_tuning', {'length': 200}, 1e-3),
}


def test_the_plan_has_one_run_per_peft_experiment_with_its_recipe(tmp_path):
  runs = sweeps.plan(CONFIG, str(tmp_path), open_fields=OPEN_FIELDS)
  labels = [peft_metamathqa.method_label(run.config) for run in runs]
  assert labels == list(EXPECTED) == list(peft_metamathqa.LABELS)
  for run, (method, options, learning_rate) in zip(runs, EXPECTED.values(), strict=True):
    config = run.config
    assert (config['method'], config['learning_rate']) == (method, learning_rate)
    assert options.items() <= config['method_options'].items()
    assert (config['model'], config['task'], config['dtype']) == (
        'meta-llama/Llama-3.2-3B', 'metamathqa', 'bfloat16')
    assert (config['max_length'], config['batch_size'], config['eval_batch_size']) == (768, 4, 50)
    assert (config['num_train_steps'], config['eval_every_steps'], config['seed']) == (5000, 250, 0)
    assert (config['weight_decay'], config['warmup_ratio'], config['clip_norm']) == (0.1, 0.1, 1.0)
    assert config['lm']['max_new_tokens'] == 300 and config['lm']['num_beams'] == 1  # greedy


def test_every_row_has_pefts_published_numbers():
  assert set(peft_metamathqa.PAPER) == {('GSM8K', label) for label in EXPECTED}
  assert round(peft_metamathqa.PAPER[('GSM8K', 'LoRA r32')], 1) == 47.8
  assert round(peft_metamathqa.PAPER_TRAIN_SECONDS['(IA)3']) == 987
  assert peft_metamathqa.PAPER_PARAMS['VeRA r256'] == '129,024'
