"""The classification model's last layer computes position 0 only; logits and gradients must equal
those of the full last layer (every position computed, then position 0 read), with adapters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import add_adapter, get_method, models
from adapters_jax.splicing import trainable
from tests.tiny_model import perturb_adapter

CONFIG = models.EncoderConfig(vocab_size=64, hidden_size=32, num_layers=3, num_heads=4,
                              intermediate_size=64, max_position_embeddings=32,
                              hidden_dropout=0.0, attention_dropout=0.0)


def _full_last_layer_logits(module, ids, mask):
  """Reference: every position through every layer, then the head on position 0."""
  hidden = module.encode(ids, mask)  # [batch, seq, hidden]
  assert hidden.shape[1] == ids.shape[1]
  features = module.pooler(hidden) if module.add_pooler else hidden[:, 0]
  return module.classifier(features, True)


def _inputs():
  ids = jax.random.randint(jax.random.key(0), (3, 11), 1, 64)
  mask = jnp.ones_like(ids).at[1, 6:].set(0).at[2, 3:].set(0)
  return ids, mask


@pytest.mark.parametrize('model_type', ['bert', 'roberta'])
@pytest.mark.parametrize('preset', ['houlsby', 'lora', 'parallel', 'ia3'])
def test_first_token_last_layer_equals_full_last_layer(preset, model_type):
  config = CONFIG.replace(model_type=model_type,
                         position_offset=2 if model_type == 'roberta' else 0)
  model = models.classification_model(config, num_labels=3)
  ids, mask = _inputs()
  params = model.init(jax.random.key(0), ids, mask)['params']
  spliced, params = add_adapter(model, params, 'a', get_method(preset), jax.random.key(1),
                                ids, mask)
  params = perturb_adapter(params, 'a')
  # The fast path really runs: the last layer's query projection sees one position.
  shapes = []
  def record(next_fun, args, kwargs, context):
    last_query = (f'layer_{CONFIG.num_layers - 1}', 'attention', 'query')
    if context.method_name == '__call__' and context.module.path[-3:] == last_query:
      shapes.append(args[0].shape)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    model.apply({'params': params}, ids, mask)
  assert shapes == [(3, 1, 32)]

  fast = spliced.apply(params, ids, mask, active='a')
  reference = spliced.apply(params, ids, mask, active='a', method=_full_last_layer_logits)
  assert fast.shape == (3, 3)
  np.testing.assert_allclose(np.asarray(fast), np.asarray(reference), rtol=1e-5, atol=1e-6)

  rules = trainable.adapter_rules([spliced.adapter('a')])
  train, frozen = trainable.split(params, trainable.make_mask(params, rules))
  labels = jnp.array([0, 2, 1])

  def loss(train_params, method):
    logits = spliced.apply(trainable.combine(train_params, frozen), ids, mask, active='a',
                           method=method)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

  grads_fast = jax.grad(loss)(train, None)
  grads_ref = jax.grad(loss)(train, _full_last_layer_logits)
  for fast_leaf, ref_leaf in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_ref),
                                 strict=True):
    np.testing.assert_allclose(np.asarray(fast_leaf), np.asarray(ref_leaf), rtol=1e-4, atol=1e-6)
