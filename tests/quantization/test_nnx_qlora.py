"""QLoRA on Flax NNX models: the frozen base of an NNX model (tunix's Qwen2, the flax-built encoder
of tests/nnx/hosts.py, an `nnx:` run's classifier) stored as NF4 blocks (`quantize_frozen(...,
select='matrices')`), dequantised inside the step, adapters in float on top; checked against the
plain NNX model called on weights the test dequantises itself in float64."""

import gc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

from adapters_jax import data, quantization
from adapters_jax.checkpoint import save
from adapters_jax.config.schema import run_config
from adapters_jax.methods import get_method
from adapters_jax.nnx import checkpoint as nnx_checkpoint
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.functional import Functional
from adapters_jax.nnx.trainable import trained_filter
from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.members import build_members
from adapters_jax.train.programs import make_step_fns
from adapters_jax.train.run_data import encode_splits, load_run_task
from adapters_jax.train.step import create_train_state
from tests.nnx import hosts
from tests.nnx import test_tunix_models as tunix
from tests.nnx.text_classifier import SITES, make_classifier
from tests.quantization.test_codec import _absmax_reference

BLOCK = 8
METHODS = ('lora', 'dora', 'vera', 'houlsby', 'ia3')
MODEL = 'nnx:tests.nnx.text_classifier:make_classifier'


def _reference(leaf) -> np.ndarray:
  """`leaf` [..., n] rounded to NF4 blocks of `BLOCK` by the test's own float64 absmax math."""
  leaf = np.asarray(leaf)
  rows = _absmax_reference(leaf.reshape(-1, leaf.shape[-1]), 'nf4', BLOCK)[0]
  return rows.reshape(leaf.shape)


def _write(model: nnx.Module, leaves: dict[str, np.ndarray]) -> None:
  """Writes `{path: array}` into the model's params in place (as float32)."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, variable in flat:
    key = '/'.join(str(k) for k in path)
    if key in leaves:
      variable[...] = jnp.asarray(leaves[key], jnp.float32)
  nnx.update(model, nnx.from_flat_state(flat))


def _qwen2():
  model = tunix._build('qwen2')
  inputs = tunix._inputs()
  methods = {m: tunix._method(m, **({'size': 4} if m == 'houlsby' else {})) for m in METHODS}
  paths = {'embedder/input_embedding', 'lm_head/w'}
  paths |= {f'layers/{i}/attn/{p}_proj/w' for i in (0, 1) for p in 'qkvo'}
  paths |= {f'layers/{i}/mlp/{p}_proj/kernel' for i in (0, 1) for p in ('gate', 'up', 'down')}
  return model, inputs, methods, lambda output: output[0], paths  # (logits [B, L, vocab], cache)


def _encoder():
  model = hosts.Encoder(nnx.Rngs(0))
  inputs = (hosts.sample_ids(),)
  methods = {m: get_method(m, sites=hosts.preset_sites('encoder', m), **hosts.FIT.get(m, {}))
             for m in METHODS}
  paths = {'embed/embedding', 'classifier/kernel'}
  paths |= {f'layers/{i}/attn/{p}/kernel' for i in (0, 1) for p in ('query', 'key', 'value', 'out')}
  paths |= {f'layers/{i}/mlp/{p}/kernel' for i in (0, 1) for p in ('up', 'down')}
  return model, inputs, methods, lambda output: output, paths  # logits [B, 2]


# The flax encoder's 2-D biases are also checked by the run's stored leaves below.
@pytest.mark.parametrize('host', [
    pytest.param(_qwen2, id='tunix_qwen2'),
    pytest.param(_encoder, id='flax_encoder', marks=pytest.mark.slow)])
def test_an_nf4_nnx_model_computes_the_float_model_on_reference_dequantised_weights(host):
  # Each adapter over the NF4 base (Functional.apply on the dequantised tree, jitted) against the
  # NNX model itself, its base weights replaced by the test's float64 NF4 rounding. Bugs caught:
  # an Einsum `w` or embedding left float, a bias ([heads, head_dim] in nnx.LinearGeneral) or an
  # adapter quantised, DoRA's column norms read from codes, a leaf dequantised with another's
  # scales or axes.
  model, inputs, methods, logits, expected_paths = host()
  for index, (name, method) in enumerate(methods.items()):
    splice.add_adapter(model, name, method, jax.random.key(index), *inputs)
  hosts.randomize(model, AdapterParam, seed=1)  # zero-initialised adapters would hide their math
  functional = Functional(model)
  mask = functional.mask(AdapterParam)
  quantized = quantization.quantize_frozen(functional.params, mask, 'nf4', BLOCK,
                                           select='matrices')
  flat = traverse_util.flatten_dict(quantized, sep='/')
  stored = {p for p, leaf in flat.items() if quantization.is_quantized(leaf)}
  assert stored == expected_paths
  float_params = traverse_util.flatten_dict(functional.params, sep='/')
  for path in stored:
    assert flat[path].codes.dtype == jnp.uint8 and flat[path].shape == float_params[path].shape
  _write(model, {p: _reference(float_params[p]) for p in stored})
  model.eval()
  apply = jax.jit(lambda params, name: functional.apply(
      quantization.dequantize_tree(params), *inputs, active=name), static_argnums=1)
  for name in methods:
    splice.set_active(model, name)
    want = logits(model(*inputs))
    got = logits(apply(quantized, name))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)
  float_out = logits(functional.apply(functional.params, *inputs, active=name))
  assert not np.allclose(got, float_out, atol=1e-4)  # NF4 did change the weights


def _config(**changes):
  config = run_config()
  config.update({'model': MODEL, 'method': 'lora', 'quantize': 'nf4',
                 'quantize_block_size': BLOCK, 'max_train_examples': 64, 'max_eval_examples': 16,
                 'max_length': 16, 'batch_size': 8, 'learning_rate': 3e-2, **changes})
  config.method_options.sites = SITES
  return config


def _live_embeddings(shape) -> int:
  gc.collect()
  return sum(1 for a in jax.live_arrays() if a.shape == shape and a.dtype == jnp.float32)


@pytest.fixture(scope='module')
def trained():
  """An `nnx:` LoRA run's experiment over an NF4 base, 8 engine steps on one batch."""
  config = _config()
  task = load_run_task(config)
  float_experiment = build_experiment(_config(quantize=''), task.spec)
  (member,), frozen = build_members([config], ['unused'], task.spec)
  experiment = member.experiment
  batch = next(data.eval_batches(encode_splits(config, task, experiment.pretrained.tokenizer,
                                               experiment.task_kind)[task.spec.train_split], 8))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  tx = optimizer.adamw(config.learning_rate, weight_decay=0.0)
  step, _ = make_step_fns(experiment, tx)
  state = create_train_state(member.train_params, tx, jax.random.key(0))
  losses = []
  for _ in range(8):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics['loss']))
  return dict(config=config, spec=task.spec, experiment=experiment, frozen=frozen, state=state,
              losses=losses, batch=batch, step=step, float_experiment=float_experiment)


def test_lora_trains_over_the_nf4_base_of_an_nnx_run(trained):
  # Through build_experiment and the engine's own step (make_step_fns). Bugs caught: the
  # quantised leaves in the trainable partition or the optimizer state, codes fed to the model
  # (no learning), counts taken on the codes, the frozen tree retracing the step.
  experiment, frozen, state = trained['experiment'], trained['frozen'], trained['state']
  stored = {p for p, leaf in traverse_util.flatten_dict(frozen, sep='/').items()
            if quantization.is_quantized(leaf)}
  assert stored == {'embed/embedding'} | {f'layers/{i}/{p}/kernel' for i in (0, 1) for p in (
      'attn/query', 'attn/key', 'attn/value', 'attn/out', 'mlp/up', 'mlp/down')}
  trained_paths = set(traverse_util.flatten_dict(state.params, sep='/'))
  assert trained_paths == {f'layers/{i}/attn/{s}/adapters/rotten_tomatoes/lora_{m}'
                           for i in (0, 1) for s in ('query', 'value') for m in 'ab'} | {
                               'classifier/kernel', 'classifier/bias'}
  moments = [leaf for leaf in jax.tree.leaves(state.opt_state) if np.ndim(leaf) > 0]
  assert sum(m.size for m in moments) == 2 * sum(
      v.size for v in jax.tree.leaves(state.params))  # Adam's mu and nu of the trained leaves
  assert experiment.counts() == trained['float_experiment'].counts()
  assert trained['step']._cache_size() == 1
  losses = trained['losses']
  assert losses[-1] < 0.5 * losses[0], losses


def test_the_float_base_is_not_kept_beside_the_quantised_one(trained):
  # Bug caught: the NNX Functional (or the split model) holding the float kernels, so QLoRA
  # saves no memory. The embedding table [vocab, 16] float32 must not stay alive.
  shape = (len(trained['experiment'].pretrained.tokenizer), 16)
  before = _live_embeddings(shape)
  experiment = build_experiment(_config(), trained['spec'])
  assert experiment.spliced.params is None
  assert _live_embeddings(shape) == before
  del experiment


def test_the_checkpoint_holds_the_adapter_and_restores_onto_a_freshly_quantised_base(
    trained, tmp_path):
  # Bugs caught: a quantised leaf (codes, scales) saved; a record fingerprinting the codes instead
  # of the float base; a restore that needs the trained run's tree.
  experiment, frozen, state, batch = (trained[k] for k in ('experiment', 'frozen', 'state',
                                                            'batch'))
  params = trainable.combine(jax.device_get(state.params), jax.device_get(frozen))
  directory = experiment.save_best(str(tmp_path / 'best'), params, {'task': 'rotten_tomatoes'})
  leaves = save.load_leaves(directory)
  assert set(leaves) == set(traverse_util.flatten_dict(state.params, sep='/'))
  assert all(np.asarray(v).dtype == np.float32 for v in leaves.values())
  record = save.load_record(directory)
  float_params = trained['float_experiment'].params
  assert record['base']['fingerprint'] == save.base_fingerprint(float_params)
  assert record['base']['weights_fingerprint'] == save.weights_fingerprint(
      float_params, skip=record['trained_paths'])
  assert record['base']['quantization']['kind'] == 'nf4'
  assert record['base']['quantization']['block_size'] == BLOCK
  want = experiment.logits(params, batch, deterministic=True)  # [8, 2]

  # The run's way (experiments.predict): a fresh quantised experiment, the leaves written in.
  fresh = build_experiment(_config(), trained['spec'])
  restored = save.overwrite_leaves(fresh.params, leaves)
  np.testing.assert_array_equal(fresh.logits(restored, batch, deterministic=True), want)

  # The adapter API's way: onto a freshly built float NNX model (its fingerprints checked, strict),
  # then its weights quantised as the run stored them.
  model = make_classifier(vocab_size=len(experiment.pretrained.tokenizer), num_labels=2,
                          rngs=nnx.Rngs(0, dropout=0))  # as the run calls it (seed 0)
  args = experiment.task_kind.model_inputs(batch)
  assert nnx_checkpoint.restore_adapter(directory, model, *args, strict=True)['adapter'] == (
      'rotten_tomatoes')
  functional = Functional(model)
  mask = functional.mask(trained_filter(model, extra=(r'classifier/.*',)))  # the head trained
  quantized = quantization.quantize_frozen(functional.params, mask, 'nf4', BLOCK,
                                           select='matrices')
  got = functional.apply(quantization.dequantize_tree(quantized), *args, active='rotten_tomatoes')
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_pissa_adapter_over_an_nf4_base_restores_strictly_onto_its_float_base(trained, tmp_path):
  # QPiSSA: the splice replaces each site kernel by its residual, which is then stored quantised.
  # Bug caught: the record's weights fingerprint sampling the residual kernels (a float run's
  # record leaves them out), so a strict restore onto the float base it was trained on is refused.
  config = _config()
  config.method_options.update({'init_weights': 'pissa', 'rank': 4})
  experiment = build_experiment(config, trained['spec'])
  directory = experiment.save_best(str(tmp_path / 'best'), experiment.params, {})
  batch = trained['batch']
  want = experiment.logits(experiment.params, batch, deterministic=True)  # [8, 2]
  model = make_classifier(vocab_size=len(experiment.pretrained.tokenizer), num_labels=2,
                          rngs=nnx.Rngs(0, dropout=0))
  args = experiment.task_kind.model_inputs(batch)
  nnx_checkpoint.restore_adapter(directory, model, *args, strict=True)  # residuals from this base
  functional = Functional(model)
  mask = functional.mask(trained_filter(model, extra=(r'classifier/.*',)))
  quantized = quantization.quantize_frozen(functional.params, mask, 'nf4', BLOCK,
                                           select='matrices')
  got = functional.apply(quantization.dequantize_tree(quantized), *args, active='rotten_tomatoes')
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_an_unknown_leaf_selection_names_the_valid_ones():
  params = {'dense': {'kernel': jnp.ones((4, 8))}}
  with pytest.raises(ValueError, match=r"Unknown leaf selection 'all'; valid: \['named', 'matrices'\]"):
    quantization.quantize_frozen(params, {'dense': {'kernel': False}}, 'nf4', BLOCK, select='all')
