"""A quantised frozen base (adapters_jax/quantization/frozen_base.py) under the spliced model: which
leaves are stored quantised, the forward equals the float model on reference-dequantised
weights, and every adapter method trains on top with the base an argument of the jitted step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import quantization
from adapters_jax.methods import get_method
from adapters_jax.models import DecoderLM
from adapters_jax.splicing import splice, trainable
from adapters_jax.train import optimizer
from adapters_jax.train.step import create_train_state, train_step
from tests.models.tiny_decoders import TINY_DECODERS
from tests.quantization.test_codec import _absmax_reference

BLOCK = 16
IDS = np.array([[5, 9, 13, 2, 40, 7, 1, 33], [8, 8, 21, 60, 3, 0, 12, 4]], np.int32)


def _spliced(method: str):
  model = DecoderLM(TINY_DECODERS['llama'])
  params = model.init(jax.random.key(0), jnp.asarray(IDS))['params']
  spliced, params = splice.add_adapter(model, params, 'task', get_method(method),
                                       jax.random.key(1), jnp.asarray(IDS))
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('task')],
                                                             train_head=False))
  return spliced, params, mask


def test_frozen_kernels_and_embeddings_are_quantised_nothing_else():
  # Bugs caught: an adapter, a trained leaf, a norm or a bias quantised; a projection left float.
  _, params, mask = _spliced('lora')
  quantized = quantization.quantize_frozen(params, mask, 'nf4', BLOCK)
  flat = traverse_util.flatten_dict(quantized, sep='/')
  stored = sorted(p for p, leaf in flat.items() if quantization.is_quantized(leaf))
  names = {'/'.join(p.split('/')[-2:]) for p in stored}
  assert names == {'query/kernel', 'key/kernel', 'value/kernel', 'output/kernel', 'gate/kernel',
                   'intermediate/kernel', 'word_embeddings/embedding', 'lm_head/kernel'} - (
                       set() if 'lm_head' in str(stored) else {'lm_head/kernel'})
  assert len(stored) == 2 * 7 + 1 + any('lm_head' in p for p in stored)
  for path, leaf in flat.items():
    if path not in stored:
      assert isinstance(leaf, jax.Array), path  # norms, adapters: as they were
  assert trainable.count(quantization.logical(quantized), mask) == trainable.count(params, mask)


def test_forward_equals_the_float_model_on_reference_dequantised_weights():
  # The test's own float64 absmax/NF4 rounding of each frozen matrix, run through the float model.
  # Bugs caught: a leaf dequantised with another's scales, axes or shape; a kernel skipped.
  spliced, params, mask = _spliced('lora')
  quantized = quantization.quantize_frozen(params, mask, 'nf4', BLOCK)
  flat, flat_mask = (traverse_util.flatten_dict(t, sep='/') for t in (params, mask))
  reference = {
      path: (jnp.asarray(_absmax_reference(np.asarray(leaf), 'nf4', BLOCK)[0], jnp.float32)
             if not flat_mask[path] and quantization.frozen_base.quantizable(path, leaf) else leaf)
      for path, leaf in flat.items()}
  reference = traverse_util.unflatten_dict(reference, sep='/')
  want = spliced.apply(reference, jnp.asarray(IDS), active='task')
  got = jax.jit(lambda p: spliced.apply(quantization.dequantize_tree(p), jnp.asarray(IDS),
                                        active='task'))(quantized)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  float_out = spliced.apply(params, jnp.asarray(IDS), active='task')
  assert not np.allclose(got, float_out, atol=1e-4)  # NF4 did change the weights


def _loss(spliced, params, batch, rng):
  logits = spliced.apply(quantization.dequantize_tree(params), batch['input_ids'], active='task',
                         deterministic=False, rngs={'dropout': rng})
  targets = batch['input_ids'][:, 1:]
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), targets[..., None],
                                       axis=-1))


@pytest.mark.parametrize('method', ['lora', 'dora'] + [
    pytest.param(m, marks=pytest.mark.slow) for m in ('vera', 'houlsby', 'ia3')])
def test_every_method_trains_on_an_nf4_base(method):
  # Bugs caught: a method that reads the base kernel (DoRA's column norms) seeing codes; the
  # quantised leaves entering the trainable partition; a step that does not learn.
  spliced, params, mask = _spliced(method)
  train_params, frozen = trainable.split(params, mask)
  frozen = quantization.quantize_frozen(frozen, jax.tree.map(lambda _: False, frozen), 'nf4',
                                        BLOCK)
  assert not any(quantization.is_quantized(leaf) for leaf in
                 jax.tree.leaves(train_params, is_leaf=quantization.is_quantized))
  tx = optimizer.adamw(1e-2, weight_decay=0.0)
  state = create_train_state(train_params, tx, jax.random.key(2))
  step = jax.jit(functools.partial(train_step, apply_fn=functools.partial(_loss, spliced),
                                   loss_fn=lambda loss, batch: loss, tx=tx), donate_argnums=0)
  batch = {'input_ids': jnp.asarray(IDS)}
  losses = []
  for _ in range(8):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics['loss']))
  assert step._cache_size() == 1  # the quantised tree's static fields do not retrace
  assert np.all(np.diff(losses) < 0) and losses[-1] < losses[0] - 1e-3, losses


@pytest.mark.parametrize('method', ['full', 'fusion'])
def test_a_quantised_base_under_a_method_that_needs_float_weights_names_the_fix(method):
  from adapters_jax.config.schema import run_config
  from adapters_jax.train.experiment import build_experiment
  config = run_config()
  config.method, config.quantize = method, 'nf4'
  with pytest.raises(ValueError, match=r"quantize='nf4'.*--config.quantize=''"):
    build_experiment(config, spec=None)


def test_dequantised_kernels_keep_their_codes_sharding():
  # The constraint `dequantize_tree(..., shardings=...)` adds (the memory it saves under FSDP:
  # test_qlora_memory); here on one device: the same values, each kernel placed as its codes.
  _, params, mask = _spliced('lora')
  quantized = quantization.quantize_frozen(params, mask, 'nf4', BLOCK)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('fsdp',))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('fsdp'))
  shardings = jax.tree.map(lambda _: split, quantized)
  placed = jax.jit(lambda p: quantization.dequantize_tree(p, shardings=shardings))(quantized)
  plain = quantization.dequantize_tree(quantized)
  kernel = placed['decoder']['layer_0']['attention']['query']['kernel']
  assert kernel.sharding.is_equivalent_to(split, kernel.ndim)
  for got, want in zip(jax.tree.leaves(placed), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
