"""`nnx.functional.Functional`: an adapted NNX model as params + apply, checked against the NNX
model itself (its call, `nnx.value_and_grad` over its `AdapterParam`s)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util

from adapters_jax.methods import get_method
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.functional import Functional
from adapters_jax.nnx.trainable import trained_filter
from tests.nnx.hosts import randomize
from tests.nnx.text_classifier import SITES, make_classifier

VOCAB = 40


def _adapted(seed=0, rngs=None):
  rngs = rngs or nnx.Rngs(seed, dropout=seed)
  model = make_classifier(vocab_size=VOCAB, num_labels=3, rngs=rngs)
  ids = jax.random.randint(jax.random.key(seed), (2, 7), 1, VOCAB)  # [batch, length]
  mask = jnp.asarray([[1] * 7, [1] * 4 + [0] * 3], jnp.int32)
  args = (ids, mask, jnp.zeros_like(ids))
  splice.add_adapter(model, 'a', get_method('lora', sites=SITES), jax.random.key(1), *args)
  randomize(model, AdapterParam, seed=3)  # LoRA's B starts at zero: make the adapter count
  return model, args


def test_apply_equals_the_model_call_in_evaluation():
  model, args = _adapted()
  functional = Functional(model)
  got = jax.jit(lambda p: functional.apply(p, *args, active='a'))(functional.params)
  base = functional.apply(functional.params, *args, active=None)
  splice.set_active(model, 'a')
  model.eval()
  want = model(*args)  # [2, 3]
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert not np.allclose(base, want, atol=1e-3)  # the adapter changes the output


def test_gradients_equal_nnx_value_and_grad_over_the_adapter_params():
  model, args = _adapted()
  labels = jnp.asarray([0, 2])
  functional = Functional(model)
  mask = functional.mask(AdapterParam)

  def loss_of(params):
    logits = functional.apply(params, *args, active='a')
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  loss, grads = jax.value_and_grad(loss_of)(functional.params)

  splice.set_active(model, 'a')
  model.eval()

  def model_loss(m):
    return optax.softmax_cross_entropy_with_integer_labels(m(*args), labels).mean()

  want_loss, want = nnx.value_and_grad(model_loss, argnums=nnx.DiffState(0, AdapterParam))(model)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  flat_want = {'/'.join(str(k) for k in p): v[...] for p, v in nnx.to_flat_state(want)}
  flat_got = traverse_util.flatten_dict(grads, sep='/')
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  assert {p for p, m in flat_mask.items() if m} == set(flat_want)
  for path, value in flat_want.items():
    np.testing.assert_allclose(flat_got[path], value, rtol=1e-5, atol=1e-7)
    assert np.abs(value).max() > 0


def test_dropout_follows_the_given_key_and_is_off_in_evaluation():
  model, args = _adapted()
  functional = Functional(model)
  train = jax.jit(lambda p, key: functional.apply(p, *args, deterministic=False, active='a',
                                                  rngs={'dropout': key}))
  first = train(functional.params, jax.random.key(5))
  np.testing.assert_array_equal(first, train(functional.params, jax.random.key(5)))
  assert not np.allclose(first, train(functional.params, jax.random.key(6)))
  evaluation = functional.apply(functional.params, *args, active='a')
  assert not np.allclose(first, evaluation)


def test_training_refuses_a_model_whose_dropout_no_key_reseeds():
  # Bug caught: a dropout stream left at its construction state, so every step draws one mask.
  model, args = _adapted(rngs=nnx.Rngs(0))  # no `dropout` stream: Dropout keeps `default`
  functional = Functional(model)
  assert functional.stream_names == ['default']
  with pytest.raises(ValueError, match=r"RNG streams \['default'\] that no key reseeds"):
    functional.apply(functional.params, *args, deterministic=False, rngs={'dropout':
                                                                         jax.random.key(0)})
  functional.apply(functional.params, *args)  # evaluation draws nothing


def test_the_mask_of_trained_filter_marks_the_adapter_and_the_head():
  model, _ = _adapted()
  functional = Functional(model)
  mask = traverse_util.flatten_dict(
      functional.mask(trained_filter(model, extra=(r'classifier/.*',))), sep='/')
  want = {f'layers/{i}/attn/{s}/adapters/a/{leaf}' for i in (0, 1) for s in ('query', 'value')
          for leaf in ('lora_a', 'lora_b')} | {'classifier/kernel', 'classifier/bias'}
  assert {p for p, m in mask.items() if m} == want
  assert functional.adapter('a').method.kind == 'lora'
  assert [s.path for s in functional.adapter('a').sites] == [
      'layers/0/attn/query', 'layers/0/attn/value', 'layers/1/attn/query', 'layers/1/attn/value']
