"""`experiments.sweep --dry_run`: every run's config built on a tiny stand-in model and trained one
step through `train_and_evaluate` (what experiments.train runs), once per distinct program; for
each paper config on a slice of its grid (GLUE from `tfds.testing.mock_data`)."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from adapters_jax import sweeps
from adapters_jax.config.schema import OPEN_FIELDS, SMOKE
from adapters_jax.train.loop import train_and_evaluate
from tests.tiny_bert import write_tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
  return str(write_tiny_bert(tmp_path_factory.mktemp('tiny_bert_dry_run')))


def _dry_run(name, only, model, root):
  path = os.path.join(CONFIGS, name)
  last = sweeps.dry_run_overrides(model)
  runs = sweeps.plan(path, str(root), only=only, open_fields=OPEN_FIELDS, last=last)
  lines = []
  with tfds.testing.mock_data(num_examples=8):
    outcome = sweeps.dry_run(path, runs, train_and_evaluate, open_fields=OPEN_FIELDS,
                             log=lines.append)
  return runs, outcome, lines


def test_runs_differing_only_in_rates_seeds_or_schedule_share_one_program(tmp_path):
  runs = sweeps.plan(os.path.join(CONFIGS, 'houlsby_glue.py'), str(tmp_path),
                     open_fields=OPEN_FIELDS)
  chosen, count = sweeps.representatives(runs)
  assert len(chosen) == len(count) == 8 * (1 + 3)  # per task: full (the base's size 64 unused),
  # and Houlsby at 3 sizes
  assert sum(count.values()) == len(runs) == 840
  assert {(r.config['task'], r.config['method'], r.config['method_options'].get('size'))
          for r in chosen} == {(t, 'full', 64) for t in houlsby_tasks()} | {
              (t, 'houlsby', s) for t in houlsby_tasks() for s in (8, 64, 256)}


def houlsby_tasks():
  from experiments.configs import houlsby_glue
  return houlsby_glue.TASKS


# (config, slice of its grid, planned runs in the slice, programs)
SLICES = [
    ('houlsby_glue.py', {'task': 'stsb', 'method_options.size': 8}, 30, 1),   # regression
    ('lora_glue.py', {'task': 'mnli', 'method': 'lora'}, 5, 1),                # 3 classes, 2 splits
    ('mini_rotten_tomatoes.py', {'method': 'ia3'}, 6, 1),
    ('fusion_glue.py', {'task': 'mrpc', 'method': 'pfeiffer'}, 1, 1),
]


@pytest.mark.slow
@pytest.mark.parametrize('name, only, planned, programs', SLICES, ids=[s[0] for s in SLICES])
def test_dry_run_builds_and_steps_each_paper_config(name, only, planned, programs, tiny_model,
                                                   tmp_path):
  runs, outcome, lines = _dry_run(name, only, tiny_model, tmp_path)
  assert len(runs) == planned
  assert outcome.failed == {} and outcome.blocked == {}, lines
  assert len(outcome.passed) == programs and sum(outcome.passed.values()) == planned
  for name_ in outcome.passed:
    run = next(r for r in runs if r.name == name_)
    assert run.config['model'] == tiny_model and run.config['num_train_steps'] == SMOKE['num_train_steps']
    assert os.path.exists(os.path.join(run.workdir, sweeps.RESULT_FILE))


@pytest.mark.slow
@pytest.mark.parametrize('name, only', [('mini_fusion.py', {'method': 'fusion',
                                                            'task': 'rotten_tomatoes'})])
def test_dry_run_trains_fusion_over_the_dry_run_adapters(name, only, tiny_model, tmp_path):
  runs, outcome, lines = _dry_run(name, only, tiny_model, tmp_path)
  assert len(runs) == 3  # the fusion and the two adapters it reads
  assert outcome.failed == {} and len(outcome.passed) == 3, lines


@pytest.mark.slow
def test_a_failing_run_is_reported_in_one_line_and_its_readers_are_blocked(tiny_model, tmp_path):
  path = os.path.join(CONFIGS, 'mini_fusion.py')
  last = sweeps.dry_run_overrides(tiny_model)
  last.append(('method_options.reduction_factr', '4'))  # a typo: pfeiffer has no such option
  runs = sweeps.plan(path, str(tmp_path), only={'method': 'fusion', 'task': 'tweet_sentiment'},
                     open_fields=OPEN_FIELDS, last=last)
  lines = []
  outcome = sweeps.dry_run(path, runs, train_and_evaluate, open_fields=OPEN_FIELDS,
                           log=lines.append)
  assert len(outcome.failed) == 2 and not outcome.passed
  assert all("Unknown option(s) ['reduction_factr']" in m for m in outcome.failed.values())
  fusion = next(r for r in runs if r.after)
  assert fusion.name in outcome.blocked


@pytest.mark.slow
def test_dry_run_cli_on_the_packaged_task(tiny_model, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep', f'--config={CONFIGS}/mini_rotten_tomatoes.py',
       f'--sweep_dir={tmp_path / "sweep"}', '--dry_run', f'--dry_run_model={tiny_model}',
       '--only=method=lora'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
  assert 'dry run: 6 runs, 1 distinct programs; 1 to build.' in run.stdout
  assert 'dry run: 1 programs ok (6 runs), 0 failed, 0 blocked.' in run.stdout
  assert not (tmp_path / 'sweep').exists()  # nothing launched, nothing left in the sweep dir


@pytest.mark.slow
@pytest.mark.parametrize('method, extra_options', [('compacter', {}), ('phm_adapter', {'n': 12})])
def test_dry_run_builds_a_compacter_table_run_on_a_stand_in_t5(tmp_path, method, extra_options):
  # The table's own runs (PHM-Adapter: n = 12, a rule per layer) through `train_and_evaluate`, with
  # adapters at the encoder's and the decoder's attention, cross-attention and FFN outputs.
  model = sweeps.stand_in_model(sweeps.STAND_IN_T5, str(tmp_path / 'stand_in'))
  only = {'task': 'rte', 'method': method, 'method_options.reduction_factor': 32}
  runs, outcome, lines = _dry_run('compacter_glue.py', only, model, tmp_path / 'runs')
  assert len(runs) == 1 and outcome.failed == {} and outcome.blocked == {}, lines
  with open(os.path.join(runs[0].workdir, sweeps.RESULT_FILE)) as f:
    result = json.load(f)
  assert result['train_steps'] == SMOKE['num_train_steps']
  assert result['config']['task_kind'] == 'seq2seq'
  assert result['config']['method_options'] == {'activation': 'gelu_tanh', 'size': None,
                                                'reduction_factor': 32, **extra_options}
  # RTE's mock validation split halved into validation and test (Compacter's scheme).
  assert set(result['test_metrics']) == {'test'}
  assert set(result['test_metrics']['test']) == {'accuracy', 'unparseable'}


@pytest.mark.slow
def test_dry_run_trains_a_prompt_tuning_table_run_on_a_stand_in_t5(tmp_path):
  # The table's prompt run through `train_and_evaluate`: a prompt in front of the encoder input,
  # teacher-forced loss and cached greedy decoding over the longer encoder output.
  model = sweeps.stand_in_model(sweeps.STAND_IN_T5, str(tmp_path / 'stand_in'))
  only = {'task': 'rte', 'method': 'prompt_tuning', 'method_options.length': 5}
  runs, outcome, lines = _dry_run('prompt_tuning_glue.py', only, model, tmp_path / 'runs')
  assert len(runs) == 1 and outcome.failed == {} and outcome.blocked == {}, lines
  with open(os.path.join(runs[0].workdir, sweeps.RESULT_FILE)) as f:
    result = json.load(f)
  assert result['config']['method_options'] == {'length': 5, 'init': 'sample_vocab',
                                                'combine': 'prefix'}
  assert result['trainable_params'] == 5 * 384  # the prompt alone (the stand-in's d_model)
  assert set(result['test_metrics']['test']) == {'accuracy', 'unparseable'}


@pytest.mark.slow
def test_dry_run_trains_the_e2e_prefix_row_on_a_stand_in_llama(tmp_path):
  # The E2E table's prefix row (Li & Liang's setting) through `train_and_evaluate` on a tiny random
  # Llama and the miniature E2E files: its method options replace LoRA's, and beam search scores it.
  from adapters_jax.models import resolve_checkpoint_dir
  from adapters_jax.models.decoder_export import random_decoder_checkpoint
  from experiments.configs import lora_e2e
  from experiments.make_random_decoder import TINY_LLAMA

  model = str(random_decoder_checkpoint(tmp_path / 'llama', TINY_LLAMA, seed=0,
                                        tokenizer_dir=resolve_checkpoint_dir('minilm-l6')))
  path = os.path.join(CONFIGS, 'lora_e2e.py')
  last = [*sweeps.dry_run_overrides(model), ('data_dir', os.path.join(ROOT, 'experiments', 'data',
                                                                      'mini_e2e')),
          ('lm.max_new_tokens', '8'), ('max_eval_examples', '4')]
  runs = sweeps.plan(path, str(tmp_path / 'runs'), only={'method': 'prefix_tuning'},
                     open_fields=OPEN_FIELDS, last=last)
  assert len(runs) == len(lora_e2e.SEEDS)
  lines = []
  outcome = sweeps.dry_run(path, runs, train_and_evaluate, open_fields=OPEN_FIELDS,
                           log=lines.append)
  assert outcome.failed == {} and outcome.blocked == {}, lines
  assert sum(outcome.passed.values()) == len(runs)
  run = next(r for r in runs if r.name in outcome.passed)
  with open(os.path.join(run.workdir, sweeps.RESULT_FILE)) as f:
    result = json.load(f)
  config = result['config']
  assert lora_e2e.method_label(config) == lora_e2e.PREFIX
  assert config['method_options'] == {'prefix_length': 5, 'bottleneck_size': 512}
  assert (config['learning_rate'], config['lm']['num_beams']) == (8e-5, 5)
  # Trained: per location (self-attention only) the P x width embedding and the width -> 512 layer,
  # and per layer (2) its 512 -> 2 x width columns (keys, values); width = 2 key/value heads x head
  # dim 16.
  width = TINY_LLAMA['num_key_value_heads'] * 16
  mlp = 5 * width + (width * 512 + 512)
  assert result['trainable_params'] == mlp + 2 * (512 * 2 * width + 2 * width)
  assert {'bleu', 'perplexity'} <= set(result['validation_metrics']['validation'])


@pytest.mark.slow
def test_dry_run_trains_every_peft_metamathqa_run_on_a_stand_in_llama(tmp_path):
  # Each of PEFT's methods (LoRA, DoRA, VeRA, (IA)3, flat prefixes, a prompt) spliced into a Llama,
  # trained on MetaMathQA-format files and scored on GSM8K-format test questions by generation.
  from adapters_jax.models import resolve_checkpoint_dir
  from adapters_jax.models.decoder_export import random_decoder_checkpoint
  from experiments.make_random_decoder import TINY_LLAMA
  from tests.data.metamathqa_files import write_metamathqa_dir

  model = random_decoder_checkpoint(tmp_path / 'llama', TINY_LLAMA, seed=0,
                                    tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  path = os.path.join(CONFIGS, 'peft_metamathqa.py')
  last = sweeps.dry_run_overrides(str(model)) + [
      ('data_dir', write_metamathqa_dir(tmp_path / 'data')), ('lm.max_new_tokens', '4'),
      ('max_length', '48'), ('max_eval_examples', '4')]
  runs = sweeps.plan(path, str(tmp_path / 'runs'), open_fields=OPEN_FIELDS, last=last)
  lines = []
  outcome = sweeps.dry_run(path, runs, train_and_evaluate, open_fields=OPEN_FIELDS,
                           log=lines.append)
  assert len(runs) == 7 and outcome.failed == {} and outcome.blocked == {}, lines
  by_method = {}
  for run in runs:
    if os.path.exists(os.path.join(run.workdir, sweeps.RESULT_FILE)):
      with open(os.path.join(run.workdir, sweeps.RESULT_FILE)) as f:
        by_method[run.config['method']] = json.load(f)
  assert set(by_method) == {'lora', 'dora', 'vera', 'ia3', 'prefix_tuning_flat', 'prompt_tuning'}
  for result in by_method.values():
    assert set(result['test_metrics']) == {'test'}
    assert set(result['test_metrics']['test']) == {'accuracy', 'loss', 'perplexity',
                                                   'log_likelihood'}
    assert 0.0 <= result['test_metrics']['test']['accuracy'] <= 1.0
  # The adapters' sizes on the stand-in (hidden 64, 2 layers, 2 KV heads of 16): LoRA r=32 on the
  # query (64 -> 64) and value (64 -> 32) projections; (IA)3 on keys, values and down_proj's input.
  assert by_method['lora']['trainable_params'] == 2 * 32 * ((64 + 64) + (64 + 32))
  assert by_method['ia3']['trainable_params'] == 2 * (32 + 32 + 128)
  assert by_method['prompt_tuning']['trainable_params'] == 200 * 64  # 200 virtual tokens
