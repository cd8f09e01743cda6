"""The accelerator attention path (`attention_impl='accelerator'`) run on CPU against the CPU path
and a float64 NumPy reference: values and gradients, padded batch, float32 and bfloat16, eval and
training with attention dropout; the cuDNN choice; bfloat16 compute with float32 master params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import models
from adapters_jax.models.attention_choice import attention_implementation, fused_kernel
from adapters_jax.models.bert import BertForSequenceClassification, SelfAttention
from tests.models.attention_reference import numpy_attention, padded_inputs

CONFIG = models.EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=32,
                              attention_dropout=0.3, hidden_dropout=0.0)
# Tolerances per compute dtype: float32 rounding, or bfloat16's 8-bit mantissa.
TOLERANCE = {'float32': dict(rtol=1e-5, atol=1e-5), 'bfloat16': dict(rtol=5e-2, atol=5e-2)}


def _apply_recording_keep(module, params, hidden, mask, deterministic, rngs):
  """Runs `module` and returns (output, the dropout keep-masks it drew)."""
  masks = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == 'keep_mask':
      masks.append(out)
    return out

  with nn.intercept_methods(record):
    out = module.apply({'params': params}, hidden, mask, deterministic, rngs=rngs)
  return out, masks


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('deterministic', [True, False], ids=['eval', 'train'])
def test_accelerator_attention_matches_cpu_path_and_float64(dtype, deterministic):
  hidden, mask = padded_inputs()
  modules = {impl: SelfAttention(CONFIG.replace(attention_impl=impl, dtype=dtype))
             for impl in ('cpu', 'accelerator')}
  params = modules['cpu'].init(jax.random.key(1), hidden, mask, True)['params']
  rngs = {'dropout': jax.random.key(2)}
  outputs = {}
  for impl, module in modules.items():
    out, masks = _apply_recording_keep(module, params, hidden, mask, deterministic, rngs)
    assert len(masks) == (0 if deterministic else 1)
    keep = None if deterministic else masks[0]
    want = numpy_attention(params, hidden, mask, keep, CONFIG.attention_dropout, 4)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, **TOLERANCE[dtype])
    outputs[impl] = (out, keep)
  # One dropout mask, drawn alike by both paths.
  if not deterministic:
    np.testing.assert_array_equal(outputs['cpu'][1], outputs['accelerator'][1])

  def loss(module):
    def fn(p, h):
      out = module.apply({'params': p}, h, mask, deterministic, rngs=rngs)
      return jnp.sum(jnp.sin(out.astype(jnp.float32)))
    return fn

  grads = {impl: jax.grad(loss(m), argnums=(0, 1))(params, hidden) for impl, m in modules.items()}
  assert_close_relative_to_largest(grads['accelerator'], grads['cpu'], **TOLERANCE[dtype])
  assert {g.dtype for g in jax.tree.leaves(grads['accelerator'])} == {jnp.dtype(jnp.float32)}


def assert_close_relative_to_largest(got_tree, ref_tree, rtol, atol):
  """Leafwise allclose after dividing both trees by the largest |ref| of the whole tree.

  One scale for all leaves: some gradients are zero up to rounding (a key bias cancels in the
  softmax), and a per-leaf scale would compare rounding noise with rounding noise.
  """
  scale = max(float(jnp.max(jnp.abs(r))) for r in jax.tree.leaves(ref_tree)) or 1.0
  for got, ref in zip(jax.tree.leaves(got_tree), jax.tree.leaves(ref_tree), strict=True):
    np.testing.assert_allclose(np.asarray(got) / scale, np.asarray(ref) / scale, rtol=rtol,
                               atol=atol)


def test_padded_keys_get_no_weight_on_the_accelerator_path():
  """Changing the hidden state at padded positions leaves the outputs of real rows unchanged."""
  module = SelfAttention(CONFIG.replace(attention_impl='accelerator'))
  hidden, mask = padded_inputs()
  params = module.init(jax.random.key(1), hidden, mask, True)['params']
  noisy = hidden.at[1, 5:].add(100.0).at[2, 2:].add(100.0)
  for deterministic in (True, False):
    run = lambda h, d=deterministic: module.apply({'params': params}, h, mask, d,
                                                  rngs={'dropout': jax.random.key(3)})
    np.testing.assert_allclose(run(hidden)[1, :5], run(noisy)[1, :5], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(hidden)[2, :2], run(noisy)[2, :2], rtol=1e-5, atol=1e-5)


def _classifier_loss(config, params, batch, deterministic):
  model = BertForSequenceClassification(config, num_labels=3)
  logits = model.apply({'params': params}, batch['ids'], batch['mask'],
                       deterministic=deterministic, rngs={'dropout': jax.random.key(5)})
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.mean(jnp.take_along_axis(log_probs, batch['labels'][:, None], axis=-1))


@pytest.fixture(scope='module')
def model_runs():
  """Loss and grads of one training-mode step of a 1-layer classifier (hidden and attention
  dropout on, padded batch) per (attention_impl, dtype), from the same float32 params."""
  config = CONFIG.replace(hidden_dropout=0.1, num_layers=1)
  ids = jax.random.randint(jax.random.key(0), (4, 9), 1, config.vocab_size)
  mask = jnp.asarray(np.arange(9)[None, :] < np.array([9, 6, 3, 9])[:, None], jnp.int32)
  batch = {'ids': ids, 'mask': mask, 'labels': jnp.asarray([0, 2, 1, 1])}
  params = BertForSequenceClassification(config, num_labels=3).init(
      jax.random.key(1), ids, mask)['params']
  runs = {'params': params}
  for impl, dtype in (('cpu', 'float32'), ('accelerator', 'float32'),
                      ('accelerator', 'bfloat16')):
    c = config.replace(attention_impl=impl, dtype=dtype)
    runs[impl, dtype] = jax.jit(jax.value_and_grad(
        lambda p, c=c: _classifier_loss(c, p, batch, False)))(params)
  return runs


def test_whole_model_train_step_same_loss_and_grads_on_both_paths(model_runs):
  (loss_cpu, grads_cpu), (loss_acc, grads_acc) = (model_runs['cpu', 'float32'],
                                                  model_runs['accelerator', 'float32'])
  assert float(loss_acc) == pytest.approx(float(loss_cpu), rel=1e-5)
  assert_close_relative_to_largest(grads_acc, grads_cpu, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_keeps_float32_master_params_and_grads(model_runs):
  loss32, grads32 = model_runs['accelerator', 'float32']
  loss16, grads16 = model_runs['accelerator', 'bfloat16']
  assert {leaf.dtype for leaf in jax.tree.leaves(model_runs['params'])} == {jnp.dtype(jnp.float32)}
  assert {leaf.dtype for leaf in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
  assert float(loss16) == pytest.approx(float(loss32), rel=2e-2)
  # bfloat16 really changed the computation (the test would pass vacuously otherwise).
  assert float(loss16) != float(loss32)
  assert_close_relative_to_largest(grads16, grads32, rtol=0, atol=5e-2)


def test_cudnn_only_where_its_constraints_hold():
  assert fused_kernel('gpu', jnp.bfloat16, 64) == 'cudnn'
  assert fused_kernel('gpu', jnp.float16, 128) == 'cudnn'
  assert fused_kernel('gpu', jnp.float32, 64) == 'xla'    # cuDNN needs 16-bit inputs
  assert fused_kernel('gpu', jnp.bfloat16, 36) == 'xla'   # head dim not a multiple of 8
  assert fused_kernel('gpu', jnp.bfloat16, 256) == 'xla'  # head dim above cuDNN's limit
  assert fused_kernel('tpu', jnp.bfloat16, 64) == 'xla'
  assert fused_kernel('cpu', jnp.bfloat16, 64) == 'xla'


def test_implementation_choice_and_validation():
  expected = 'cpu' if jax.default_backend() == 'cpu' else 'accelerator'
  assert attention_implementation(CONFIG) == expected
  assert attention_implementation(CONFIG.replace(attention_impl='accelerator')) == 'accelerator'
  assert attention_implementation(CONFIG.replace(attention_impl='cpu')) == 'cpu'
  with pytest.raises(ValueError, match=r"attention_impl='gpu'.*'accelerator'"):
    CONFIG.replace(attention_impl='gpu')
