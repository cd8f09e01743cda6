"""AdapterFusion on the tiny model (layer, training split, checkpoints, attention), and the fusion
training / multi-adapter prediction paths end to end on a tiny BERT."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from flax import traverse_util

from adapters_jax import adapter_leaves, add_adapter, get_method
from adapters_jax.checkpoint import restore, save
from adapters_jax.checkpoint.fusion_checkpoint import restore_fusion, save_fusion
from adapters_jax.checkpoint.restore import restore_adapters
from adapters_jax.methods import FusionConfig
from adapters_jax.predict.serving import load_adapter_server
from adapters_jax.splicing import trainable
from adapters_jax.splicing.composition import Fuse
from adapters_jax.splicing.fusion_layers import (
  add_fusion,
  fusion_attentions,
  fusion_regularization,
  fusion_rules,
  plot_fusion_attention,
)
from adapters_jax.train import loop
from adapters_jax.train.step import classification_loss, create_train_state, train_step
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_perturb = functools.partial(perturb_adapter, scale=0.3)


@pytest.fixture(scope='module')
def tiny():
  model = TinyClassifier()
  ids, mask = tiny_batch(batch=4)
  spliced, params = model, init_tiny(model)
  for i, (name, method) in enumerate({'a': get_method('houlsby', size=4),
                                      'b': get_method('pfeiffer'),
                                      'l': get_method('lora')}.items()):
    spliced, params = add_adapter(spliced, params, name, method, jax.random.key(i), ids, mask)
    params = _perturb(params, name, seed=i)
  spliced, params = add_fusion(spliced, params, ('a', 'b'), jax.random.key(5))
  return model, spliced, params, ids, mask


def test_one_adapter_identity_fusion_equals_the_adapter(tiny):
  _, spliced, params, ids, mask = tiny
  spliced1, params1 = add_fusion(spliced, params, ('b',), jax.random.key(6), name='fuse_b')
  fused = spliced1.apply(params1, ids, mask, active=Fuse('b'))
  alone = spliced1.apply(params1, ids, mask, active='b')
  np.testing.assert_allclose(fused, alone, rtol=1e-4, atol=1e-4)  # up to the 1e-6 value noise
  assert fusion_regularization(spliced1, params1, 'fuse_b') < 1e-8


def _site_params(params, path, name):
  node = params
  for key in path.split('/') + ['adapters', name]:
    node = node[key]
  return jax.tree.map(lambda a: np.asarray(a, np.float64), node)


def _gelu64(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def _fusion64(y, deltas, p):
  """AdapterFusion by hand in float64: y [B, L, F], deltas [B, L, K, F] -> (output, attention)."""
  q = y @ p['query']['kernel'] + p['query']['bias']  # [B, L, F]
  k = deltas @ p['key']['kernel'] + p['key']['bias']  # [B, L, K, F]
  v = deltas @ p['value']['kernel']  # [B, L, K, F]
  scores = np.einsum('blf,blkf->blk', q, k)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)  # [B, L, K]
  return y + np.einsum('blk,blkf->blf', probs, v), probs


def test_two_adapter_fusion_equals_a_hand_written_reference(tiny):
  model, spliced, params, ids, mask = tiny
  # Distinct fusion weights, far from init, so the attention over a and b is far from uniform.
  params = _perturb(params, 'a,b', scale=0.5, seed=11)
  activations = {'a': _gelu64, 'b': lambda v: np.maximum(v, 0.0)}  # Houlsby, Pfeiffer
  sites = {n: [s.path for s in spliced.adapter(n).sites] for n in ('a', 'b')}
  attention = {}

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = '/'.join(context.module.path)
    if context.method_name != '__call__' or path not in sites['a']:
      return out
    y = np.asarray(out, np.float64)
    deltas = []
    for name in ('a', 'b'):  # the fusion's adapter order
      if path in sites[name]:
        p = _site_params(params, path, name)
        h = activations[name](y @ p['down']['kernel'] + p['down']['bias'])
        deltas.append(h @ p['up']['kernel'] + p['up']['bias'])  # the adapter without its residual
    fused, attention[path] = _fusion64(y, np.stack(deltas, axis=-2),
                                       _site_params(params, path, 'a,b'))
    return jnp.asarray(fused, out.dtype)

  with nn.intercept_methods(intercept):  # the host alone (it ignores the grafted leaves)
    want = model.apply({'params': params}, ids, mask)
  got, state = spliced.apply(params, ids, mask, active=Fuse('a', 'b'), mutable=['intermediates'])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  weights = fusion_attentions(state['intermediates'], 'a,b')
  assert sorted(weights) == sorted(attention)
  for path, probs in attention.items():
    np.testing.assert_allclose(weights[path], probs, rtol=1e-4, atol=1e-5)
  two = np.concatenate([p.reshape(-1, 2) for path, p in attention.items() if 'ffn' in path])
  assert np.abs(two[:, 0] - 0.5).max() > 0.05  # the reference is not the trivial uniform mix
  # The regulariser: 0.01 (the default weight) * sum over the fusion's sites of ||V - I||^2.
  penalty = sum(np.sum((_site_params(params, path, 'a,b')['value']['kernel'] - np.eye(16)) ** 2)
                for path in attention)
  np.testing.assert_allclose(float(fusion_regularization(spliced, params, 'a,b')), 0.01 * penalty,
                             rtol=1e-5)


def test_attention_weights_sum_to_one_and_plot(tiny, tmp_path):
  _, spliced, params, ids, mask = tiny
  _, state = spliced.apply(params, ids, mask, active='a,b', mutable=['intermediates'])
  weights = fusion_attentions(state['intermediates'], 'a,b')
  # a sits at attention and FFN outputs, b only at FFN outputs: 1 or 2 adapters per site.
  assert {k: v.shape[-1] for k, v in weights.items()} == {
      'encoder/layer_0/attention/output': 1, 'encoder/layer_0/ffn/output': 2,
      'encoder/layer_1/attention/output': 1, 'encoder/layer_1/ffn/output': 2}
  for probs in weights.values():
    assert probs.shape[:2] == ids.shape
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  ffn = {k: v for k, v in weights.items() if 'ffn' in k}
  png = plot_fusion_attention(ffn, tmp_path / 'att.png', adapters=['a', 'b'], mask=mask)
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_only_fusion_and_head_train(tiny):
  _, spliced, params, ids, mask = tiny
  rules = fusion_rules(spliced, 'a,b')
  mask_tree = trainable.make_mask(params, rules)
  train_params, frozen = trainable.split(params, mask_tree)
  trained = sorted(traverse_util.flatten_dict(train_params, sep='/'))
  assert trained and all('/adapters/a,b/' in p or p.startswith('classifier/') for p in trained)
  tx = optax.adam(1e-2)
  labels = jnp.array([0, 1, 1, 0])

  def apply_fn(p, batch, rng):
    return spliced.apply(p, batch['ids'], batch['mask'], active='a,b', deterministic=False,
                         rngs={'dropout': rng}), fusion_regularization(spliced, p, 'a,b')

  def loss_fn(out, batch):
    return classification_loss(out[0], batch['labels']) + out[1]

  step = jax.jit(lambda s, f, b: train_step(s, f, b, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx))
  state = create_train_state(train_params, tx, jax.random.key(0))
  for _ in range(3):
    state, _ = step(state, frozen, {'ids': ids, 'mask': mask, 'labels': labels})
  after = trainable.combine(state.params, frozen)
  before_flat = traverse_util.flatten_dict(params, sep='/')
  after_flat = traverse_util.flatten_dict(after, sep='/')
  for path in before_flat:
    if path in trained:
      continue
    np.testing.assert_array_equal(before_flat[path], after_flat[path])  # bit-identical
  moved = [p for p in trained if not np.array_equal(before_flat[p], after_flat[p])]
  assert any('/value/' in p for p in moved) and any(p.startswith('classifier/') for p in moved)
  assert fusion_regularization(spliced, after, 'a,b') > 0


def test_fusion_checkpoint_roundtrip_and_adapter_errors(tiny, tmp_path):
  model, spliced, params, ids, mask = tiny
  params = _perturb(params, 'a,b', scale=0.05, seed=11)
  expected = spliced.apply(params, ids, mask, active=Fuse('a', 'b'))
  directory = save_fusion(tmp_path / 'fusion', spliced, params, 'a,b', base_name='tiny')
  record = save.load_record(directory)
  assert record['method']['adapters'] == ['a', 'b'] and record['extra']['fusion']['adapters'] == [
      'a', 'b']

  # Fresh splice of the same adapters (same weights), then the fusion from disk.
  def with_adapters(names, b_method=None, b_scale=None):
    s, p = model, init_tiny(model)
    for i, name in enumerate(names):
      method = b_method if (name == 'b' and b_method) else spliced.adapter(name).method
      s, p = add_adapter(s, p, name, method, jax.random.key(i), ids, mask)
      flat = traverse_util.flatten_dict(p, sep='/')
      if not (name == 'b' and b_method):
        flat.update(adapter_leaves(params, name))
      p = traverse_util.unflatten_dict(flat, sep='/')
    if b_scale:
      p = _perturb(p, 'b', scale=b_scale)
    return s, p

  s, p = with_adapters(['a', 'b'])
  s, p = restore_fusion(directory, s, p)
  np.testing.assert_allclose(s.apply(p, ids, mask, active=Fuse('a', 'b')), expected, rtol=1e-6,
                             atol=1e-6)
  with pytest.raises(save.CheckpointError, match="adapter 'b' is not spliced.*Restore"):
    restore_fusion(directory, *with_adapters(['a']))
  with pytest.raises(save.CheckpointError, match="config differs in \\['reduction_factor"):
    restore_fusion(directory, *with_adapters(['a', 'b'], b_method=get_method('pfeiffer',
                                                                             reduction_factor=4)))
  with pytest.raises(save.CheckpointError, match='other weights.*check_adapters=False'):
    restore_fusion(directory, *with_adapters(['a', 'b'], b_scale=0.1))
  restore_fusion(directory, *with_adapters(['a', 'b'], b_scale=0.1), check_adapters=False)


def test_fusion_config_errors(tiny):
  _, spliced, params, _, _ = tiny
  with pytest.raises(ValueError, match="'l' is a lora adapter"):
    add_fusion(spliced, params, ('a', 'l'), jax.random.key(0))
  with pytest.raises(ValueError, match='set regularization=0.0'):
    FusionConfig(adapters=('a',), value=False)
  with pytest.raises(ValueError, match='repeat'):
    FusionConfig(adapters=('a', 'a'))


# --------------------------------------------------------------------------------------------------
# End to end on a tiny BERT: two task adapters, fusion on mock GLUE, prediction with both.


@pytest.fixture(scope='module')
def tiny_bert(tmp_path_factory):
  from tests.tiny_bert import write_tiny_bert

  return str(write_tiny_bert(tmp_path_factory.mktemp('tiny_bert_fusion')))


@pytest.fixture(scope='module')
def adapter_workdirs(tiny_bert, tmp_path_factory):
  from experiments.configs import quickstart

  root = tmp_path_factory.mktemp('adapters')
  workdirs = {}
  for task in ('rotten_tomatoes', 'tweet_sentiment'):
    config = quickstart.get_config('smoke')
    config.model, config.task, config.method = tiny_bert, task, 'pfeiffer'
    config.tensorboard, config.num_train_steps = False, 3
    config.max_train_examples, config.max_eval_examples = 48, 16
    config.learning_rate = 1e-2
    loop.train_and_evaluate(config, str(root / task))
    workdirs[task] = str(root / task)
  return workdirs


@pytest.mark.slow
def test_multi_predictor_per_row_column_and_cli(adapter_workdirs, tmp_path):
  rt, tw = adapter_workdirs['rotten_tomatoes'], adapter_workdirs['tweet_sentiment']
  predictor = load_adapter_server([rt, tw], batch_size=4)
  texts = ['A triumph of acting.', 'Waymo cars are great', 'A dull mess.', 'I hate traffic',
           'It is a movie.']
  names = ['rotten_tomatoes', 'tweet_sentiment', 'rotten_tomatoes', 'tweet_sentiment',
           'tweet_sentiment']
  mixed = predictor.predict(texts, adapters=names)
  # Independent reference: each adapter alone, restored over its own fresh base with its head.
  from adapters_jax import models

  for workdir, name in ((rt, 'rotten_tomatoes'), (tw, 'tweet_sentiment')):
    rows = [i for i, n in enumerate(names) if n == name]
    with open(os.path.join(workdir, 'config.json')) as f:
      model_dir = json.load(f)['model']
    base = models.load_pretrained(model_dir, head='classification',
                                  num_labels=2 if name == 'rotten_tomatoes' else 3)
    tokens = base.tokenizer([texts[i] for i in rows], padding=True, return_tensors='np')
    ids, m, t = (jnp.asarray(tokens[k]) for k in ('input_ids', 'attention_mask', 'token_type_ids'))
    spliced, params = restore.restore_adapter(os.path.join(workdir, 'best'), base.model,
                                                 base.params, ids, m, t, deterministic=True)
    probs = np.asarray(jax.nn.softmax(spliced.apply(params, ids, m, t, active=name)))
    for row, p in zip(rows, probs, strict=True):
      assert mixed[row]['adapter'] == name
      np.testing.assert_allclose(list(mixed[row]['probabilities'].values()), p, rtol=1e-4,
                                 atol=1e-5)
  chosen = predictor.predict(texts[:2], adapter='tweet_sentiment')
  assert [p['adapter'] for p in chosen] == ['tweet_sentiment'] * 2
  with pytest.raises(ValueError, match='loaded adapters'):
    predictor.predict(texts[:1], adapters=['nope'])
  with pytest.raises(save.CheckpointError, match='rename='):
    restore_adapters([os.path.join(rt, 'best')], *_host_with_clashing_name())

  lines = [f'{n}\t{t}' for n, t in zip(names, texts, strict=True)]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  proc = subprocess.run([sys.executable, '-m', 'experiments.predict', f'--workdir={rt},{tw}',
                         '--adapter_column'], input='\n'.join(lines) + '\n', cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert [o['adapter'] for o in out] == names
  assert [o['label'] for o in out] == [m['label'] for m in mixed]


def _host_with_clashing_name():
  """A spliced host that already has an adapter named like the rotten_tomatoes checkpoint's."""
  model = TinyClassifier()
  ids, mask = tiny_batch()
  spliced, params = add_adapter(model, init_tiny(model), 'rotten_tomatoes', get_method('lora'),
                                jax.random.key(0), ids, mask)
  return spliced, params
