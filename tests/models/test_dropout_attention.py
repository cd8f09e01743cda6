"""`dropout_attention` (hand-written backward) against independent references: its values and
its gradients against a float64 NumPy forward and central finite differences of it, and its
gradients against JAX autodiff of the plain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax.models.dropout_attention import dropout_attention
from adapters_jax.nn.dropout import dropout_keep_mask

RATE = 0.3


def _numpy_attention(q, k, v, mask, keep, rate):
  """float64 reference: softmax over keys (masked keys get -inf; a fully masked row is uniform,
  as with the finite fill value), inverted dropout on the probabilities, weighted sum."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum('btnh,bsnh->bnts', q, k) / np.sqrt(q.shape[-1])
  mask = np.broadcast_to(np.asarray(mask), logits.shape)
  logits = np.where(mask, logits, -1e300)
  logits = np.where(mask.any(-1, keepdims=True), logits, 0.0)  # fully masked row: uniform
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  probs = np.where(np.asarray(keep), probs / (1 - rate), 0.0)
  return np.einsum('bnts,bsnh->btnh', probs, v)


def _autodiff_attention(q, k, v, mask, keep, rate):
  """The plain float32 formula, differentiated by JAX."""
  logits = jnp.einsum('btnh,bsnh->bnts', q, k) / jnp.sqrt(q.shape[-1])
  probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
  return jnp.einsum('bnts,bsnh->btnh', jnp.where(keep, probs / (1 - rate), 0.0), v)


def _case(q_len=6, k_len=6, heads=4, head_mask=False):
  """Random q/k/v, a padding mask (example 1 padded, example 2 fully masked) and a keep-mask."""
  batch, dim = 3, 8
  q, k, v, d_out = (jax.random.normal(jax.random.key(i), shape) for i, shape in enumerate(
      [(batch, q_len, heads, dim), (batch, k_len, heads, dim), (batch, k_len, heads, dim),
       (batch, q_len, heads, dim)]))
  valid = np.ones((batch, k_len), bool)
  valid[1, k_len - 2:] = False
  valid[2, :] = False
  mask = jnp.asarray(valid)[:, None, None, :]  # [batch, 1, 1, k_len]
  if head_mask:  # a different mask per head: also hide key 0 from head 1
    mask = jnp.broadcast_to(mask, (batch, heads, q_len, k_len)).at[:, 1, :, 0].set(False)
  keep = dropout_keep_mask(jax.random.key(9), (batch, heads, q_len, k_len), RATE)
  return q, k, v, d_out, mask, keep


@pytest.mark.parametrize('groups,q_len,head_mask', [(1, 6, False), (2, 6, False), (4, 6, True),
                                                    (2, 1, False)])
def test_values_and_gradients_match_float64_finite_differences(groups, q_len, head_mask):
  q, k, v, _, mask, keep = _case(q_len=q_len, head_mask=head_mask)
  out = dropout_attention(q, k, v, mask, keep, RATE, groups)
  want = _numpy_attention(q, k, v, mask, keep, RATE)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)

  weights = np.asarray(jax.random.normal(jax.random.key(5), want.shape), np.float64)
  loss = lambda q, k, v: jnp.sum(dropout_attention(q, k, v, mask, keep, RATE, groups) * weights)
  grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
  ref_loss = lambda args: float(np.sum(_numpy_attention(*args, mask, keep, RATE) * weights))
  base = [np.asarray(a, np.float64) for a in (q, k, v)]
  rng = np.random.default_rng(0)
  eps = 1e-5
  for which, grad in enumerate(grads):
    for _ in range(3):
      direction = rng.standard_normal(base[which].shape)
      plus, minus = list(base), list(base)
      plus[which] = base[which] + eps * direction
      minus[which] = base[which] - eps * direction
      numeric = (ref_loss(plus) - ref_loss(minus)) / (2 * eps)
      analytic = float(np.sum(np.asarray(grad, np.float64) * direction))
      assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric)), (which, analytic, numeric)


@pytest.mark.parametrize('groups', [1, 4])
def test_gradients_equal_autodiff_of_the_plain_formula(groups):
  q, k, v, d_out, mask, keep = _case()
  _, vjp = jax.vjp(lambda *a: dropout_attention(*a, mask, keep, RATE, groups), q, k, v)
  _, vjp_ref = jax.vjp(lambda *a: _autodiff_attention(*a, mask, keep, RATE), q, k, v)
  for got, want in zip(vjp(d_out), vjp_ref(d_out), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_give_bfloat16_outputs_and_gradients():
  q, k, v, d_out, mask, keep = _case()
  low = [a.astype(jnp.bfloat16) for a in (q, k, v)]
  out, vjp = jax.vjp(lambda *a: dropout_attention(*a, mask, keep, RATE, 2), *low)
  grads = vjp(d_out.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  _, vjp32 = jax.vjp(lambda *a: dropout_attention(*a, mask, keep, RATE, 2), q, k, v)
  for got, want in zip(grads, vjp32(d_out), strict=True):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), rtol=0.1, atol=0.1)


def test_bad_groups_or_rate_are_refused():
  q, k, v, _, mask, keep = _case()
  with pytest.raises(ValueError, match='groups=3 must divide the number of heads'):
    dropout_attention(q, k, v, mask, keep, RATE, 3)
  with pytest.raises(ValueError, match=r'dropout rate must be in \[0, 1\)'):
    dropout_attention(q, k, v, mask, keep, 1.0, 1)
