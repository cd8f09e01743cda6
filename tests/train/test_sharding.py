"""Sharding rules (train/sharding_rules.py): a LoRA step of a tiny Llama under FSDP, tensor
parallelism and both on 8 (forced host) devices equals the one-device step, with the weights and
the batch really split; rule errors name the leaf and the fix."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec

from adapters_jax.train import optimizer, placement, sharding_rules
from adapters_jax.train.step import create_train_state

ROOT = pathlib.Path(__file__).resolve().parents[2]
MESH = AbstractMesh((4, 2), ('data', 'model'))

SCRIPT = r'''
import importlib.util, json
import jax, numpy as np
from adapters_jax.train import sharding_rules

spec = importlib.util.spec_from_file_location('lm_steps', 'scripts/lm_steps.py')
lm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lm)
assert jax.device_count() == 8, jax.devices()

def run(mesh=None, strategy=None):
  rules = None if mesh is None else sharding_rules.strategy_rules(strategy)
  built = lm.llama_adapter_step('llama-tiny', 8, 16, mesh=mesh, rules=rules)
  state, losses = built['state'], []
  facts = {}
  if mesh is not None:
    frozen, batch = built['frozen'], built['batch']
    attention = frozen['decoder']['layer_0']['attention']
    ffn = frozen['decoder']['layer_1']['ffn']
    for name, leaf in (('query', attention['query']['kernel']),
                       ('output', attention['output']['kernel']),
                       ('down', ffn['output']['kernel']),
                       ('embedding', frozen['embeddings']['word_embeddings']['embedding']),
                       ('input_ids', batch['input_ids'])):
      facts[name] = {'spec': [a for a in leaf.sharding.spec],
                     'shards': sorted({tuple(s.data.shape) for s in leaf.addressable_shards}),
                     'devices': len(leaf.sharding.device_set)}
  for _ in range(3):  # LoRA's B starts at zero: A moves from the second step on
    state, metrics = built['step'](state, built['frozen'], built['batch'])
    losses.append(float(metrics['loss']))
  lora = {k: np.asarray(v).tolist() for k, v in
          jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
          for k in [jax.tree_util.keystr(k, simple=True, separator='/')]}
  moments = [l for l in jax.tree.leaves(state.opt_state) if getattr(l, 'ndim', 0) == 2]
  facts['moments_replicated'] = all(m.sharding.is_fully_replicated for m in moments)
  return {'losses': losses, 'lora': lora, 'facts': facts}

devices = jax.devices()
out = {'one': run()}
for strategy, model_parallelism in (('fsdp', 1), ('tp', 4), ('fsdp+tp', 2)):
  out[strategy] = run(sharding_rules.make_mesh(devices, model_parallelism), strategy)
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def eight_devices():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('strategy', ['fsdp', 'tp', 'fsdp+tp'])
def test_sharded_lora_step_equals_the_one_device_step(eight_devices, strategy):
  one, sharded = eight_devices['one'], eight_devices[strategy]
  np.testing.assert_allclose(sharded['losses'], one['losses'], rtol=1e-5, atol=1e-5)
  assert one['losses'][0] != one['losses'][-1]  # training moved
  assert sorted(sharded['lora']) == sorted(one['lora'])
  for path, want in one['lora'].items():
    np.testing.assert_allclose(sharded['lora'][path], want, rtol=1e-5, atol=1e-5, err_msg=path)
  assert sharded['facts']['moments_replicated']  # LoRA A/B and their moments: a copy each


# Per strategy: (spec, per-device shard shape) of the tiny Llama's leaves (hidden 32, query width
# 32, vocab 64, FFN 64) and of the [8, 16] batch, written out by hand from the Megatron layout.
EXPECTED = {
    # FSDP: the largest dim over data (8); the batch rows over data: 1 row per device.
    'fsdp': {'query': ([None, 'data'], [32, 4]), 'output': ([None, 'data'], [32, 4]),
             'down': (['data', None], [8, 32]), 'embedding': (['data', None], [8, 32]),
             'input_ids': (['data'], [1, 16])},
    # TP on a [2 data, 4 model] mesh: query column-, output and FFN down row-parallel,
    # embedding over the vocab; 4 rows per device (a model group shares its rows).
    'tp': {'query': ([None, 'model'], [32, 8]), 'output': (['model', None], [8, 32]),
           'down': (['model', None], [16, 32]), 'embedding': (['model', None], [16, 32]),
           'input_ids': (['data'], [4, 16])},
    # FSDP+TP on [4 data, 2 model]: TP's dim over model, the other over data.
    'fsdp+tp': {'query': (['data', 'model'], [8, 16]), 'output': (['model', 'data'], [16, 8]),
                'down': (['model', 'data'], [32, 8]), 'embedding': (['model', 'data'], [32, 8]),
                'input_ids': (['data'], [2, 16])},
}


@pytest.mark.slow
@pytest.mark.parametrize('strategy', sorted(EXPECTED))
def test_weights_and_batch_are_split_not_replicated(eight_devices, strategy):
  facts = eight_devices[strategy]['facts']
  for name, (spec, shard) in EXPECTED[strategy].items():
    assert facts[name]['spec'] == spec, name
    assert facts[name]['shards'] == [shard], name
    assert facts[name]['devices'] == 8, name


def test_first_matching_rule_wins_and_specs_name_trailing_dims():
  rules = [(r'.*/adapters/.*', PartitionSpec()), (r'.*/kernel', PartitionSpec(None, 'model')),
           (r'.*', PartitionSpec())]
  assert sharding_rules.leaf_spec('a/adapters/x/kernel', (8, 8), rules, MESH) == PartitionSpec(
      None, None)
  assert sharding_rules.leaf_spec('a/kernel', (8, 6), rules, MESH) == PartitionSpec(None, 'model')
  # A scanned stack's leading [layers] axis stays whole.
  assert sharding_rules.leaf_spec('layers/q/kernel', (3, 8, 6), rules, MESH) == PartitionSpec(
      None, None, 'model')


def test_largest_divisible_dim_or_replicated():
  rules = [(r'.*', sharding_rules.Largest('data'))]
  assert sharding_rules.leaf_spec('w', (12, 32), rules, MESH) == PartitionSpec(None, 'data')
  assert sharding_rules.leaf_spec('w', (32, 6), rules, MESH) == PartitionSpec('data', None)
  assert sharding_rules.leaf_spec('w', (6, 3), rules, MESH) == PartitionSpec()  # 4 divides none
  assert sharding_rules.leaf_spec('count', (), rules, MESH) == PartitionSpec()


def test_optimizer_moments_follow_their_param_and_counters_are_replicated():
  state = create_train_state({'a': {'kernel': jnp.zeros((8, 4)), 'bias': jnp.zeros(4)}},
                             optimizer.adamw(1e-3), jax.random.key(0))
  rules = [(r'.*/kernel', PartitionSpec('data', None)), (r'.*', PartitionSpec())]
  specs = {sharding_rules.path_of(k): s.spec for k, s in
           jax.tree_util.tree_leaves_with_path(sharding_rules.state_shardings(state, rules, MESH))}
  assert specs['params/a/kernel'] == PartitionSpec('data', None)
  moments = {p: s for p, s in specs.items() if p.endswith('/a/kernel') and 'opt_state' in p}
  assert len(moments) == 2  # AdamW's mu and nu
  assert all(s == PartitionSpec('data', None) for s in moments.values())
  assert all(s == PartitionSpec() for p, s in specs.items() if p.endswith('count'))
  assert specs['step'] == specs['rng'] == PartitionSpec()


def test_a_dim_the_axis_does_not_divide_names_the_leaf_and_the_fix():
  rules = sharding_rules.strategy_rules('fsdp+tp')
  with pytest.raises(ValueError, match=r"'decoder/layer_0/attention/key/kernel' \(32, 7\): dim 7 "
                                       r"is not divisible by mesh axis 'model' of size 2.*"
                                       r'model_parallelism'):
    sharding_rules.leaf_spec('decoder/layer_0/attention/key/kernel', (32, 7), rules, MESH)
  with pytest.raises(ValueError, match="No sharding rule matches 'x/y'"):
    sharding_rules.leaf_spec('x/y', (4,), [(r'a/.*', PartitionSpec())], MESH)
  with pytest.raises(ValueError, match=r"Unknown sharding strategy 'zero3'.*'fsdp\+tp'"):
    sharding_rules.strategy_rules('zero3')


def test_placement_from_config_stores_the_frozen_base_in_bfloat16():
  config = ml_collections.ConfigDict({'sharding': 'fsdp', 'model_parallelism': 1,
                                      'frozen_dtype': 'bfloat16'})
  arrays = placement.Placement.from_config(config, jax.devices()[:1])
  frozen = {'embeddings': {'word_embeddings': {'embedding': jnp.full((4, 2), 1 / 3)}},
            'ids': jnp.arange(3)}
  state = create_train_state({'lora_b': jnp.full((2, 2), 1 / 3)}, optax.adam(1e-3),
                             jax.random.key(0))
  placed_state, placed_frozen = arrays.place(state, frozen)
  assert placed_frozen['embeddings']['word_embeddings']['embedding'].dtype == jnp.bfloat16
  assert placed_frozen['ids'].dtype == jnp.int32  # integers untouched
  assert placed_state.params['lora_b'].dtype == jnp.float32  # float32 master weights
  assert placed_state.opt_state[0].mu['lora_b'].dtype == jnp.float32
  with pytest.raises(ValueError, match="sharding='data' has no model axis: set "
                                       'model_parallelism=1'):
    placement.Placement.from_config(ml_collections.ConfigDict(
        {'sharding': 'data', 'model_parallelism': 2, 'frozen_dtype': 'float32'}))


def test_bfloat16_frozen_base_trains_like_the_rounded_float32_model():
  """The step with the base stored in bfloat16 equals the float32 step on a base rounded to
  bfloat16 by hand: the storage dtype reaches the step, and the float32 compute is kept."""
  spec = importlib.util.spec_from_file_location('lm_steps', ROOT / 'scripts' / 'lm_steps.py')
  lm = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(lm)
  stored = lm.llama_adapter_step('llama-tiny', 2, 8, frozen_dtype=jnp.bfloat16)
  rounded = lm.llama_adapter_step('llama-tiny', 2, 8)
  rounded['frozen'] = jax.tree.map(
      lambda x: np.asarray(x, np.float32).astype(jnp.bfloat16).astype(np.float32)
      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, rounded['frozen'])
  plain = lm.llama_adapter_step('llama-tiny', 2, 8)
  losses = {}
  for name, built in (('stored', stored), ('rounded', rounded), ('plain', plain)):
    state = built['state']
    for _ in range(2):
      state, metrics = built['step'](state, built['frozen'], built['batch'])
    losses[name] = float(metrics['loss'])
    assert jax.tree.leaves(state.params)[0].dtype == jnp.float32
  assert losses['stored'] == pytest.approx(losses['rounded'], rel=1e-6)
  assert losses['stored'] != losses['plain']
