"""An adapter spliced into transformers' FlaxBertForSequenceClassification changes its output as the
formula says, and training the adapter alone (head and BERT frozen) moves the logits.

Reference: transformers' own Flax module run on weights edited by hand (LoRA's update added to the
query and value kernels in float64), not our splice.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from transformers import BertConfig
from transformers.models.bert.modeling_flax_bert import FlaxBertForSequenceClassificationModule

from adapters_jax import add_adapter, get_method
from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer
from adapters_jax.train.step import classification_loss, create_train_state, train_step

RANK, ALPHA = 4, 8.0


def _setup():
  config = BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, num_labels=2, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
  model = FlaxBertForSequenceClassificationModule(config)
  ids = jax.random.randint(jax.random.key(0), (4, 10), 1, 128)
  mask = jnp.ones_like(ids).at[0, 6:].set(0)
  args = (ids, mask, jnp.zeros_like(ids), jnp.broadcast_to(jnp.arange(10), ids.shape), None)
  params = model.init(jax.random.key(0), *args)['params']
  spliced, spliced_params = add_adapter(model, params, 'task', get_method('lora', rank=RANK, alpha=ALPHA),
                                        jax.random.key(1), *args, deterministic=True)
  return model, params, spliced, spliced_params, args


def _with_random_lora_b(params):
  flat = traverse_util.flatten_dict(params, sep='/')
  keys = jax.random.split(jax.random.key(7), len(flat))
  for key, path in zip(keys, sorted(flat), strict=True):
    if path.endswith('/lora_b'):
      flat[path] = 0.3 * jax.random.normal(key, flat[path].shape)
  return traverse_util.unflatten_dict(flat, sep='/')


def test_lora_in_hf_bert_equals_hf_bert_with_hand_merged_kernels():
  model, base_params, spliced, params, args = _setup()
  params = _with_random_lora_b(params)
  flat = traverse_util.flatten_dict(params, sep='/')
  lora_paths = sorted(p for p in flat if p.endswith('/lora_a'))
  # Query and value of both layers, as the preset says.
  assert [p.split('/adapters/')[0] for p in lora_paths] == [
      f'bert/encoder/layer/{i}/attention/self/{m}' for i in (0, 1) for m in ('query', 'value')]
  edited = traverse_util.flatten_dict(base_params, sep='/')
  for path in lora_paths:
    site = path.split('/adapters/')[0]
    a = np.asarray(flat[path], np.float64)                               # [in, r]
    b = np.asarray(flat[path.replace('/lora_a', '/lora_b')], np.float64)  # [r, out]
    kernel = np.asarray(edited[f'{site}/kernel'], np.float64)            # [in, out]
    edited[f'{site}/kernel'] = jnp.asarray(kernel + ALPHA / RANK * a @ b, jnp.float32)
  reference = model.apply({'params': traverse_util.unflatten_dict(edited, sep='/')}, *args).logits
  base = model.apply({'params': base_params}, *args).logits
  got = spliced.apply(params, *args, active='task').logits
  assert float(jnp.max(jnp.abs(reference - base))) > 1e-3  # the update reaches the logits
  np.testing.assert_allclose(np.asarray(got), np.asarray(reference), rtol=1e-5, atol=1e-5)
  # Without `active` the host runs untouched.
  np.testing.assert_array_equal(np.asarray(spliced.apply(params, *args).logits), np.asarray(base))


def test_training_the_adapter_alone_moves_the_hf_logits_and_lowers_the_loss():
  _, _, spliced, params, args = _setup()
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('task')], train_head=False))
  train_part, frozen = trainable.split(params, mask)
  assert all('/adapters/task/' in p for p in trainable.leaf_paths(train_part))
  tx = optimizer.adamw(3e-2)
  state = create_train_state(train_part, tx, jax.random.key(2))
  batch = {'labels': jnp.array([0, 1, 1, 0])}
  apply_fn = lambda p, batch, rng: spliced.apply(p, *args, active='task', deterministic=False,
                                                 rngs={'dropout': rng}).logits
  step = jax.jit(functools.partial(train_step, apply_fn=apply_fn, tx=tx,
                                   loss_fn=lambda logits, b: classification_loss(logits, b['labels'])))
  before = spliced.apply(params, *args, active='task').logits
  losses = []
  for _ in range(25):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics['loss']))
  after = spliced.apply(trainable.combine(state.params, frozen), *args, active='task').logits
  assert losses[-1] < 0.8 * losses[0], losses
  assert float(jnp.max(jnp.abs(after - before))) > 1e-2
  # The base (no adapter active) is what it was: only adapter leaves trained.
  np.testing.assert_array_equal(
      np.asarray(spliced.apply(trainable.combine(state.params, frozen), *args).logits),
      np.asarray(spliced.apply(params, *args).logits))
