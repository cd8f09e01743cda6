"""The fast exact GELU and the hash-based dropout against independent references."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import erf

from adapters_jax.nn.activations import gelu_exact
from adapters_jax.nn.dropout import Dropout, dropout_keep_mask


def test_gelu_exact_and_its_derivative_match_float64():
  x = np.linspace(-8, 8, 20001)
  want = x * 0.5 * (1 + erf(x / np.sqrt(2)))
  want_grad = 0.5 * (1 + erf(x / np.sqrt(2))) + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
  xs = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(np.asarray(gelu_exact(xs)), want, atol=2e-6)
  grad = jax.vmap(jax.grad(gelu_exact))(xs)
  np.testing.assert_allclose(np.asarray(grad), want_grad, atol=2e-6)
  # Same function as jax's own exact GELU.
  np.testing.assert_allclose(np.asarray(gelu_exact(xs)),
                             np.asarray(jax.nn.gelu(xs, approximate=False)), atol=2e-6)


def test_dropout_mask_rate_independence_and_scaling():
  rate = 0.1
  keep = np.asarray(dropout_keep_mask(jax.random.key(0), (1000, 1000), rate))
  assert abs(keep.mean() - (1 - rate)) < 2e-3
  # Neighbouring elements are uncorrelated (a counter hash must not leave stripes).
  a, b = keep[:, :-1].ravel().astype(float), keep[:, 1:].ravel().astype(float)
  assert abs(np.corrcoef(a, b)[0, 1]) < 5e-3
  other = np.asarray(dropout_keep_mask(jax.random.key(1), (1000, 1000), rate))
  assert 0.15 < (keep != other).mean() < 0.21  # ~2 p (1 - p) for independent masks
  x = jnp.ones((4096, 256))
  out = Dropout(rate).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(2)})
  values = np.unique(np.asarray(out))
  np.testing.assert_allclose(values, [0.0, 1 / (1 - rate)], rtol=1e-6)
  assert abs(float(out.mean()) - 1.0) < 5e-3
  np.testing.assert_array_equal(np.asarray(Dropout(rate).apply({}, x, deterministic=True)), 1.0)
