"""The module paths adapters splice into: every projection is an intercepted `__call__`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.models import EncoderConfig, classification_model

CFG = EncoderConfig(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2,
                    intermediate_size=24, max_position_embeddings=8)
IDS = jnp.array([[1, 4, 5, 0]], jnp.int32)


def _dense_paths(config):
  model = classification_model(config, num_labels=2)
  params = model.init(jax.random.key(0), IDS)['params']
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == '__call__':
      seen.append('/'.join(context.module.path))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply({'params': params}, IDS)
  return seen, model, params


def test_dense_sites_have_the_documented_paths():
  seen, _, _ = _dense_paths(CFG)
  per_layer = ['attention/query', 'attention/key', 'attention/value', 'attention/output',
               'ffn/intermediate', 'ffn/output']
  expected = [f'encoder/layer_{i}/{site}' for i in range(2) for site in per_layer]
  assert seen == expected + ['pooler/dense', 'classifier/dense']


def test_scanned_sites_keep_names_inside_the_layer():
  seen, _, _ = _dense_paths(CFG.replace(scan_layers=True))
  assert 'encoder/layers/attention/output' in seen and 'encoder/layers/ffn/output' in seen


def test_interceptor_can_replace_an_output():
  _, model, params = _dense_paths(CFG)
  base = model.apply({'params': params}, IDS)

  def zero_attention_output(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if '/'.join(context.module.path) == 'encoder/layer_1/attention/output':
      return jnp.zeros_like(out)
    return out

  with nn.intercept_methods(zero_attention_output):
    changed = model.apply({'params': params}, IDS)
  assert not np.allclose(base, changed)
