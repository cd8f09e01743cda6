"""Splicing into a Linen model nobody here wrote: transformers' FlaxBertForSequenceClassification.

Built from a config (random init, no download). Also: exact trainable-parameter counts on a
BERT-base-sized config, against closed-form arithmetic.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from transformers import BertConfig
from transformers.models.bert.modeling_flax_bert import FlaxBertForSequenceClassificationModule

from adapters_jax import add_adapter, get_method
from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer
from adapters_jax.train.step import classification_loss, create_train_state, train_step


def _hf_bert(**overrides):
  config = BertConfig(**{**dict(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64, num_labels=2),
                         **overrides})
  return FlaxBertForSequenceClassificationModule(config)


def _hf_inputs(batch=4, length=10):
  ids = jax.random.randint(jax.random.key(0), (batch, length), 1, 128)
  mask = jnp.ones_like(ids).at[0, 6:].set(0)
  return ids, mask, jnp.zeros_like(ids), jnp.broadcast_to(jnp.arange(length), ids.shape)


def _call_args(ids, mask, types, positions):
  return (ids, mask, types, positions, None)


@pytest.mark.parametrize('preset,n_sites', [('houlsby', 4), ('lora', 4)])
def test_houlsby_and_lora_splice_into_hf_bert_and_train(preset, n_sites):
  model = _hf_bert()
  inputs = _hf_inputs()
  params = model.init(jax.random.key(0), *_call_args(*inputs))['params']
  overrides = {'size': 8} if preset == 'houlsby' else {}
  spliced, params = add_adapter(model, params, 'task', get_method(preset, **overrides),
                                jax.random.key(1), *_call_args(*inputs), deterministic=True)
  sites = [s.path for s in spliced.adapter('task').sites]
  assert len(sites) == n_sites
  if preset == 'houlsby':
    assert sites[0] == 'bert/encoder/layer/0/attention/output/dense'
    assert sites[1] == 'bert/encoder/layer/0/output/dense'
  else:
    assert sites[:2] == ['bert/encoder/layer/0/attention/self/query',
                         'bert/encoder/layer/0/attention/self/value']

  mask_tree = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('task')]))
  train_part, frozen = trainable.split(params, mask_tree)
  trained_paths = [p for p in trainable.leaf_paths(train_part)]
  if preset == 'houlsby':
    assert any('LayerNorm' in p for p in trained_paths)
  assert any(p.startswith('classifier/') for p in trained_paths)
  tx = optimizer.adamw(1e-2)
  state = create_train_state(train_part, tx, jax.random.key(2))
  labels = jnp.array([0, 1, 0, 1])

  def apply_fn(p, batch, rng):
    return spliced.apply(p, *_call_args(*batch['inputs']), deterministic=False,
                         active='task', rngs={'dropout': rng}).logits

  loss_fn = lambda logits, batch: classification_loss(logits, batch['labels'])
  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, tx=tx))
  batch = {'inputs': inputs, 'labels': labels}
  first = None
  for _ in range(30):
    state, metrics = step(state, frozen, batch)
    first = float(metrics['loss']) if first is None else first
  assert float(metrics['loss']) < 0.75 * first
  # Leaf by leaf against the params before training, with what trains named from the paths alone:
  # the adapter, the head, and (Houlsby) the LayerNorms change; all of BERT's other weights are
  # bit-identical.
  after = traverse_util.flatten_dict(trainable.combine(state.params, frozen), sep='/')
  before = traverse_util.flatten_dict(params, sep='/')
  assert after.keys() == before.keys()
  for path, value in before.items():
    trains = ('/adapters/task/' in path or path.startswith('classifier/')
              or (preset == 'houlsby' and 'LayerNorm' in path))
    assert np.array_equal(np.asarray(after[path]), np.asarray(value)) != trains, path


def test_zero_init_splice_equals_hf_base_exactly():
  model = _hf_bert()
  inputs = _hf_inputs()
  params = model.init(jax.random.key(0), *_call_args(*inputs))['params']
  base = model.apply({'params': params}, *_call_args(*inputs)).logits
  for name in ('lora', 'ia3', 'pfeiffer'):
    spliced, p = add_adapter(model, params, name, get_method(name), jax.random.key(1),
                             *_call_args(*inputs))
    out = spliced.apply(p, *_call_args(*inputs), active=name).logits
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base))


def test_parameter_counts_on_bert_base_match_closed_form():
  """BERT-base dims (L=12, d=768, FFN 3072), abstract base weights: only adapters are allocated."""
  model = _hf_bert(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072)
  inputs = _hf_inputs(batch=1, length=8)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *_call_args(*inputs)))['params']
  d, f, layers = 768, 3072, 12

  def bottleneck(m):
    return d * m + m + m * d + d

  def compacter(m):  # rank-1 PHM: down s=d, t=m, bias m; up s=m, t=d, bias d
    return (d + m + m) + (m + d + d)

  expected = {
      ('houlsby', ()): 2 * layers * bottleneck(64),
      ('houlsby', (('size', 8),)): 2 * layers * bottleneck(8),
      ('pfeiffer', ()): layers * bottleneck(d // 16),
      ('lora', ()): 2 * layers * (d * 8 + 8 * d),
      ('ia3', ()): layers * (d + d + f),
      ('compacter', ()): 2 * layers * compacter(d // 32) + 4**3,
      ('compacter++', ()): layers * compacter(d // 32) + 4**3,
  }
  for (name, overrides), want in expected.items():
    spliced, params = add_adapter(model, abstract, 'a', get_method(name, **dict(overrides)),
                                  jax.random.key(1), *_call_args(*inputs))
    from adapters_jax import adapter_leaves
    got = trainable.count_params(adapter_leaves(params, 'a'))
    assert got == want, (name, overrides, got, want)
  assert expected[('houlsby', ())] == 2_379_264
  assert expected[('lora', ())] == 294_912
