"""AdapterFusion trains in the one loop: its regulariser in the loss, kill -9 and resume, prediction.

Two Pfeiffer adapters are trained for a few steps on the packaged tasks with a tiny BERT; fusion
runs over them go through the CLI like a user's.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from tensorflow_datasets import testing as tfds_testing

from adapters_jax import data, models, restore_adapters
from adapters_jax.checkpoint import save
from adapters_jax.checkpoint.fusion_checkpoint import restore_fusion
from adapters_jax.train import loop
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.metrics_log import read_metrics
from experiments.configs import fusion_glue, quickstart
from tests.train.kill import kill_once_checkpointed
from tests.train.test_loop import ROOT, _final_state_leaves

TASKS = ('rotten_tomatoes', 'tweet_sentiment')
FUSED = 'rotten_tomatoes,tweet_sentiment'


@pytest.fixture(scope='module')
def adapter_dirs(tiny_bert_dir, tmp_path_factory):
  """best/ of two short Pfeiffer runs (rotten_tomatoes, tweet_sentiment) on the tiny BERT."""
  root = tmp_path_factory.mktemp('fused_adapters')
  dirs = []
  for task in TASKS:
    config = quickstart.get_config('smoke')
    config.model, config.task, config.method = tiny_bert_dir, task, 'pfeiffer'
    config.tensorboard, config.num_train_steps, config.learning_rate = False, 3, 1e-2
    config.max_train_examples, config.max_eval_examples = 48, 16
    loop.train_and_evaluate(config, str(root / task))
    dirs.append(str(root / task / 'best'))
  return tuple(dirs)


def _fusion_cli(module, workdir, model_dir, adapter_dirs, wait=True):
  cmd = [sys.executable, '-m', module,
         '--config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes',
         f'--workdir={workdir}', f'--config.model={model_dir}',
         f'--config.method_options.adapter_dirs={adapter_dirs!r}',
         '--config.max_train_examples=128', '--config.max_eval_examples=32',
         '--config.batch_size=8', '--config.eval_batch_size=16', '--config.num_train_steps=8',
         '--config.checkpoint_every_steps=2', '--config.eval_every_steps=4',
         '--config.log_every_steps=1', '--config.learning_rate=1e-2']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_fusion_loss_is_task_loss_plus_value_regulariser(tiny_bert_dir, adapter_dirs):
  # Bug caught: the loop dropping the experiment's regulariser (or adding it twice).
  config = fusion_glue.get_config('fusion-rte,smoke')
  config.model, config.task = tiny_bert_dir, 'rotten_tomatoes'
  config.method_options.adapter_dirs = adapter_dirs
  experiment = build_experiment(config, data.get_task('rotten_tomatoes'))
  flat = traverse_util.flatten_dict(experiment.params, sep='/')
  rng = np.random.default_rng(0)
  values = {}
  for path, leaf in flat.items():
    if path.endswith(f'/adapters/{FUSED}/value/kernel'):
      flat[path] = jnp.asarray(np.asarray(leaf) + rng.normal(0, 0.3, leaf.shape), leaf.dtype)
      values[path] = np.asarray(flat[path], np.float64)
  assert len(values) == 2  # one Pfeiffer site per layer
  params = traverse_util.unflatten_dict(flat, sep='/')
  encoded = data.encode(data.load_task('rotten_tomatoes')['train'][:8],
                        experiment.pretrained.tokenizer, 32)
  batch = next(iter(data.eval_batches(encoded, 8)))
  rng_key = jax.random.PRNGKey(3)
  total = float(experiment.training_loss(params, batch, rng_key))
  task = float(experiment.task_kind.loss(experiment.forward, params, batch, rng_key))
  expected = 0.01 * sum(np.sum((v - np.eye(v.shape[-1])) ** 2) for v in values.values())
  assert expected > 0.5
  assert total - task == pytest.approx(expected, rel=1e-4)


@pytest.mark.slow
def test_fusion_on_mock_glue_writes_a_run(tiny_bert_dir, adapter_dirs, tmp_path):
  config = fusion_glue.get_config('fusion-rte,smoke')
  config.model = tiny_bert_dir
  config.method_options.adapter_dirs = adapter_dirs
  with tfds_testing.mock_data(num_examples=16):
    result = loop.train_and_evaluate(config, str(tmp_path))
  assert result['fused_adapters'] == list(TASKS) and result['method'] == 'fusion'
  assert result['test_metrics'] == {} and 'validation' in result['validation_metrics']
  assert os.path.exists(tmp_path / 'fusion_attention.png')
  steps = sorted(int(step) for step in os.listdir(tmp_path / 'checkpoints'))
  assert steps[-1] == result['train_steps'] and len(steps) <= config.keep_checkpoints
  record = save.load_record(tmp_path / 'best')
  assert record['adapter'] == FUSED and record['extra']['fusion']['adapters'] == list(TASKS)
  # Only the fusion layers and the head were saved: the fused adapters stay frozen.
  leaves = save.load_leaves(tmp_path / 'best')
  assert all(f'/adapters/{FUSED}/' in p or p.startswith('classifier/') for p in leaves)
  assert 0 < result['trainable_params'] < result['total_params']


@pytest.mark.slow
def test_fusion_sigkill_resume_equals_uninterrupted_and_predict_serves_it(
    tiny_bert_dir, adapter_dirs, tmp_path):
  straight = tmp_path / 'straight'
  done = _fusion_cli('experiments.fuse', straight, tiny_bert_dir, adapter_dirs)  # the alias
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'Traceback' not in done.stderr, done.stderr[-3000:]

  killed = tmp_path / 'killed'
  proc = _fusion_cli('experiments.train', killed, tiny_bert_dir, adapter_dirs, wait=False)
  kill_once_checkpointed(proc, killed, 4)
  assert not os.path.exists(killed / 'result.json')
  resumed = _fusion_cli('experiments.train', killed, tiny_bert_dir, adapter_dirs)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from step' in resumed.stderr

  step_a, state_a = _final_state_leaves(straight)
  step_b, state_b = _final_state_leaves(killed)
  assert step_a == step_b == 8
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)
  best_a, best_b = (save.load_leaves(w / 'best') for w in (straight, killed))
  assert best_a.keys() == best_b.keys()
  for path in best_a:
    np.testing.assert_array_equal(best_a[path], best_b[path])
  assert read_metrics(str(straight), timings=False) == read_metrics(str(killed), timings=False)
  result_a, result_b = (json.loads((w / 'result.json').read_text()) for w in (straight, killed))
  for key in ('best_step', 'validation_metrics', 'test_metrics', 'fused_adapters'):
    assert result_a[key] == result_b[key]
  assert os.path.exists(killed / 'fusion_attention.png')

  # experiments.predict serves the fusion workdir; reference: the adapters and the fusion restored
  # by hand over a fresh base.
  texts = ['A triumph of acting and heart.', 'A dull, lifeless mess.']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  served = subprocess.run([sys.executable, '-m', 'experiments.predict', f'--workdir={straight}'],
                          input='\n'.join(texts) + '\n', cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
  assert served.returncode == 0, served.stderr[-3000:]
  lines = [json.loads(line) for line in served.stdout.splitlines() if line.startswith('{')]
  base = models.load_pretrained(tiny_bert_dir, head='classification', num_labels=2)
  tokens = base.tokenizer(texts, padding=True, return_tensors='np')
  args = tuple(jnp.asarray(tokens[k]) for k in ('input_ids', 'attention_mask', 'token_type_ids'))
  spliced, params, _ = restore_adapters(list(adapter_dirs), base.model, base.params, *args,
                                        deterministic=True)
  spliced, params = restore_fusion(straight / 'best', spliced, params)
  probabilities = np.asarray(jax.nn.softmax(spliced.apply(params, *args, active=FUSED,
                                                         deterministic=True), -1))
  assert [line['text'] for line in lines] == texts
  for line, row in zip(lines, probabilities, strict=True):
    np.testing.assert_allclose([line['probabilities']['rotten'], line['probabilities']['fresh']],
                               row, rtol=1e-4, atol=1e-5)
