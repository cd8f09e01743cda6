"""An NNX model trained through `experiments.train --config.model=nnx:...`, killed and resumed, and
answering `experiments.predict`, all in subprocesses."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adapters_jax.checkpoint import save
from adapters_jax.methods import get_method
from adapters_jax.models.hf_files import load_tokenizer
from adapters_jax.models.registry import resolve_checkpoint_dir
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.checkpoint import restore_adapter
from adapters_jax.train.metrics_log import read_metrics
from tests.nnx.text_classifier import SITES, make_classifier
from tests.train.kill import assert_resumed_equals_uninterrupted, kill_once_checkpointed
from tests.train.test_loop import _final_state_leaves

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
MODEL = 'nnx:tests.nnx.text_classifier:make_classifier'
ADAPTER = 'rotten_tomatoes'  # the task's name
# What the run trains, written out from the model's layout: LoRA at query and value of both
# layers, and the head.
TRAINED = {f'layers/{i}/attn/{site}/adapters/{ADAPTER}/{leaf}'
           for i in (0, 1) for site in ('query', 'value') for leaf in ('lora_a', 'lora_b')}
TRAINED |= {'classifier/kernel', 'classifier/bias'}


def _command(workdir):
  return [sys.executable, '-m', 'experiments.train',
          '--config=experiments/configs/quickstart.py:smoke', f'--workdir={workdir}',
          f'--config.model={MODEL}', '--config.method=lora',
          f'--config.method_options.sites={SITES!r}', '--config.max_train_examples=32',
          '--config.learning_rate=0.03', '--config.warmup_ratio=0.0',
          '--config.num_train_steps=12', '--config.checkpoint_every_steps=4',
          '--config.eval_every_steps=4', '--config.log_every_steps=4', '--config.tensorboard=False']


def _run(workdir, wait=True):
  if not wait:
    return subprocess.Popen(_command(workdir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(_command(workdir), cwd=ROOT, env=ENV, capture_output=True, text=True,
                        timeout=600)


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The workdir of an uninterrupted run."""
  workdir = tmp_path_factory.mktemp('nnx_run') / 'straight'
  done = _run(workdir)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_the_loss_falls_and_checkpoints_hold_the_adapter_and_head_only(straight):
  # Bugs caught: the whole NNX state in the optimizer (base leaves in the checkpoints); a params
  # tree whose edits never reach the model that is called (a flat loss).
  # One record per epoch (32 examples, batch 8): each the mean loss over the same examples.
  losses = [r['loss'] for r in read_metrics(str(straight), timings=False) if r['split'] == 'train']
  assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses
  assert losses[2] < 0.8 * losses[0], losses
  best = save.load_leaves(straight / 'best')
  assert set(best) == TRAINED
  assert best['classifier/kernel'].shape == (16, 2)
  record = save.load_record(straight / 'best')
  assert record['adapter'] == ADAPTER and record['method']['kind'] == 'lora'
  assert sorted(record['trained_paths']) == sorted(TRAINED)
  step, state = _final_state_leaves(straight)
  flat = {'/'.join(k): v for k, v in _flatten(state['params']).items()}
  assert step == 12 and set(flat) == TRAINED
  result = json.loads((straight / 'result.json').read_text())
  assert result['model'] == MODEL and result['trainable_params'] == sum(
      int(np.prod(v.shape)) for v in best.values())


def _flatten(tree, prefix=()):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(straight, tmp_path):
  # Bugs caught: a resumed run whose constructor call differs (other base weights), or whose
  # dropout follows RNG counts kept in the model instead of the step's key.
  killed = tmp_path / 'killed'
  proc = _run(killed, wait=False)
  kill_once_checkpointed(proc, killed, 4)
  assert not os.path.exists(killed / 'result.json')
  resumed = _run(killed)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from step' in resumed.stderr
  assert_resumed_equals_uninterrupted(straight, killed, 12)


@pytest.mark.slow
def test_predict_answers_as_the_plain_nnx_model_with_the_best_leaves(straight):
  # Reference: the model built by its constructor, LoRA spliced, the best leaves written into its
  # state and called as an NNX model (no params tree, no engine).
  texts = ['A triumph of a film.', 'Two hours I will never get back.']
  done = subprocess.run([sys.executable, '-m', 'experiments.predict', f'--workdir={straight}'],
                        cwd=ROOT, env=ENV, input='\n'.join(texts) + '\n', capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  answers = [json.loads(line) for line in done.stdout.splitlines()]

  tokenizer = load_tokenizer(resolve_checkpoint_dir('minilm-l6'))
  model = make_classifier(vocab_size=len(tokenizer), num_labels=2,
                          rngs=nnx.Rngs(0, dropout=0))  # as experiments.train calls it (seed 0)
  encoded = tokenizer(texts, padding=True, return_tensors='np')
  args = (jnp.asarray(encoded['input_ids']), jnp.asarray(encoded['attention_mask']),
          jnp.asarray(encoded['token_type_ids']))
  splice.add_adapter(model, ADAPTER, get_method('lora', sites=SITES), jax.random.key(0), *args)
  best = save.load_leaves(straight / 'best')
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, variable in flat:
    key = '/'.join(str(k) for k in path)
    if key in best:
      variable[...] = jnp.asarray(best[key])
    else:
      assert not isinstance(variable, AdapterParam)
  nnx.update(model, nnx.from_flat_state(flat))
  splice.set_active(model, ADAPTER)
  model.eval()
  probabilities = np.asarray(jax.nn.softmax(model(*args), axis=-1))  # [2, 2]
  labels = ['rotten', 'fresh']
  for answer, text, row in zip(answers, texts, probabilities, strict=True):
    assert answer['text'] == text
    assert answer['label'] == labels[int(np.argmax(row))]
    np.testing.assert_allclose([answer['probabilities'][n] for n in labels], row, atol=1e-5)

  # The adapter API reads the run's best/ too: adapter and head restored onto a fresh model.
  fresh = make_classifier(vocab_size=len(tokenizer), num_labels=2, rngs=nnx.Rngs(0, dropout=0))
  record = restore_adapter(straight / 'best', fresh, *args, strict=True)
  assert record['adapter'] == ADAPTER
  splice.set_active(fresh, ADAPTER)
  fresh.eval()
  np.testing.assert_allclose(jax.nn.softmax(fresh(*args), axis=-1), probabilities, atol=1e-6)
