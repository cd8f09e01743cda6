"""Training-mode attention (dropout on the probabilities) computed in head groups equals a float64
NumPy reference that uses the same dropout mask, for every grouping; gradients agree too."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import models
from adapters_jax.models.attention_choice import head_groups
from adapters_jax.models.bert import SelfAttention
from tests.models.attention_reference import numpy_attention, padded_inputs

CONFIG = models.EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=32,
                              attention_dropout=0.3)


@pytest.mark.parametrize('groups', [1, 2, 4])
def test_grouped_attention_with_dropout_matches_float64(groups):
  config = CONFIG.replace(attention_head_groups=groups)
  assert head_groups(config) == groups
  module = SelfAttention(config)
  hidden, mask = padded_inputs()
  params = module.init(jax.random.key(1), hidden, mask, True)['params']
  rngs = {'dropout': jax.random.key(2)}
  masks = []
  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == 'keep_mask':
      masks.append(out)
    return out
  with nn.intercept_methods(record):
    out = module.apply({'params': params}, hidden, mask, False, rngs=rngs)
  (keep,) = masks
  assert keep.shape == (3, 4, 7, 7) and 0.5 < float(keep.mean()) < 0.9
  want = numpy_attention(params, hidden, mask, keep, config.attention_dropout, 4)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)

  # Same values and gradients as one group over all heads (the mask does not depend on grouping).
  one = SelfAttention(CONFIG.replace(attention_head_groups=1))
  loss = lambda m: lambda p, h: jnp.sum(m.apply({'params': p}, h, mask, False, rngs=rngs) ** 2)
  grads = jax.grad(loss(module), argnums=(0, 1))(params, hidden)
  grads_one = jax.grad(loss(one), argnums=(0, 1))(params, hidden)
  for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_one), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_head_groups_choice_and_validation():
  assert head_groups(CONFIG.replace(attention_head_groups=2)) == 2
  # Automatic: 4 (or the largest divisor of num_heads not above 4) on CPU.
  if jax.default_backend() == 'cpu':
    assert head_groups(CONFIG) == 4
    assert head_groups(CONFIG.replace(num_heads=2, hidden_size=32)) == 2
    assert head_groups(CONFIG.replace(num_heads=6, hidden_size=36)) == 3
    # Deep unscanned stacks keep one group (compile time); scanned ones group.
    assert head_groups(CONFIG.replace(num_layers=24)) == 1
    assert head_groups(CONFIG.replace(num_layers=24, scan_layers=True)) == 4
  with pytest.raises(ValueError, match='attention_head_groups=3 must be 0'):
    CONFIG.replace(attention_head_groups=3)
