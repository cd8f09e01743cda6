"""The vmapped group and a run trained alone are one engine: a group of one member writes what the
run alone writes, a group re-splits its task as its runs do (`split_scheme`), and groups of
text-to-text (T5) and causal-LM (decoder, generation-scored) runs end as their runs trained one by
one. Each group goes through `train.vmapped.train_group`, what `experiments.sweep
--launcher=vmap` calls; each run alone through `train.loop.train_and_evaluate`."""

import pathlib

import pytest

from adapters_jax.models import resolve_checkpoint_dir
from adapters_jax.models.decoder_export import random_decoder_checkpoint
from adapters_jax.models.t5_random import write_random_t5
from adapters_jax.train import loop, run_data, vmapped
from experiments.configs import mini_lora_lm, mini_t5_rotten_tomatoes, quickstart
from experiments.make_random_decoder import TINY_LLAMA
from tests.train import vmap_runs
from tests.train.test_seq2seq import TINY_T5

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Two grid points of a row: other rates and seeds (other data orders, initialisations).
MEMBERS = ({'learning_rate': 1e-2, 'seed': 0}, {'learning_rate': 3e-3, 'seed': 1})


def _group_and_alone(configs, root: pathlib.Path):
  """Trains `configs` as one vmapped group and each alone; returns both lists of workdirs."""
  grouped = [root / f'group_{i}' for i in range(len(configs))]
  vmapped.train_group(configs, [str(w) for w in grouped])
  alone = [root / f'alone_{i}' for i in range(len(configs))]
  for config, workdir in zip(configs, alone, strict=True):
    loop.train_and_evaluate(config, str(workdir))
  return grouped, alone


def _bert_config(model_dir, **overrides):
  """Smoke size; one length bucket (max_length 16), so that members of other seeds draw the
  dropout masks of their separate runs (`train.member_batches`)."""
  config = quickstart.get_config('smoke')
  config.model, config.max_length = model_dir, 16
  config.num_train_steps, config.eval_every_steps, config.checkpoint_every_steps = 4, 2, 2
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


@pytest.mark.slow
def test_a_one_member_group_writes_what_its_run_alone_writes(tiny_bert_dir, tmp_path):
  # Fails if the group's cadence, records, best selection or result differ from the plain run's
  # (e.g. a train record at another step, a validation pass skipped, another best step).
  grouped, alone = _group_and_alone([_bert_config(tiny_bert_dir)], tmp_path)
  vmap_runs.assert_same_run(grouped[0], alone[0])
  got, want = vmap_runs.result(grouped[0]), vmap_runs.result(alone[0])
  assert got['validation_metrics'] == want['validation_metrics']
  assert got['test_metrics'] == want['test_metrics']
  assert got['vmapped_members'] == 1 and 'vmapped_members' not in want


@pytest.mark.slow
def test_a_group_re_splits_its_task_as_its_runs_do(tiny_bert_dir, tmp_path):
  # Fails if the group loads the task without `split_scheme` (it would select and report on the
  # task's own validation split, which the scheme turns into the test split).
  configs = [_bert_config(tiny_bert_dir, split_scheme='validation_as_test', **m) for m in MEMBERS]
  grouped, alone = _group_and_alone(configs, tmp_path)
  for group_dir, alone_dir in zip(grouped, alone, strict=True):
    vmap_runs.assert_same_run(group_dir, alone_dir)
  # The scheme changes this task's splits (else the comparison above could not see it ignored).
  unsplit = run_data.load_run_task(_bert_config(tiny_bert_dir))
  resplit = run_data.load_run_task(configs[0])
  assert len(resplit['validation']) < len(unsplit['validation'])


@pytest.mark.slow
def test_a_text_to_text_group_ends_as_its_runs(tmp_path):
  # Fails if the group refuses seq2seq runs, pads the members' target sequences by the encoder
  # batch keys only, or decodes (greedy generation) with another member's params.
  model = write_random_t5(tmp_path / 't5', tokenizer_dir=resolve_checkpoint_dir('minilm-l6'),
                          seed=0, **TINY_T5)
  configs = []
  for member in MEMBERS:
    config = mini_t5_rotten_tomatoes.get_config('smoke')
    config.model, config.max_eval_examples, config.eval_batch_size = str(model), 8, 8
    config.learning_rate, config.seed = member['learning_rate'], member['seed']
    configs.append(config)
  grouped, alone = _group_and_alone(configs, tmp_path)
  for group_dir, alone_dir in zip(grouped, alone, strict=True):
    vmap_runs.assert_same_run(group_dir, alone_dir)
  assert 'unparseable' in vmap_runs.result(grouped[0])['validation_metrics']['validation']


@pytest.mark.slow
def test_a_causal_lm_group_ends_as_its_runs(tmp_path):
  # Fails if the group refuses causal-LM runs, stacks the members' rows or prompts of other
  # lengths, or scores a member's generations against another member's references.
  model = random_decoder_checkpoint(tmp_path / 'llama', TINY_LLAMA, seed=0,
                                    tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  configs = []
  for member in MEMBERS:
    config = mini_lora_lm.get_config('smoke')
    config.model, config.data_dir = str(model), str(ROOT / 'experiments/data/mini_e2e')
    config.lm.max_new_tokens, config.max_eval_examples = 8, 8
    config.learning_rate, config.seed = member['learning_rate'], member['seed']
    configs.append(config)
  grouped, alone = _group_and_alone(configs, tmp_path)
  for group_dir, alone_dir in zip(grouped, alone, strict=True):
    vmap_runs.assert_same_run(group_dir, alone_dir)
  metrics = vmap_runs.result(grouped[0])['validation_metrics']['validation']
  assert {'perplexity', 'bleu'} <= set(metrics)
