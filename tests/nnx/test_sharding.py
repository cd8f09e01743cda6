"""A sharded NNX model keeps its `nnx.with_partitioning` annotations when adapters are spliced in;
the adapter leaves are replicated (the Linen runs' rule) or, for LoRA with
`lora_follows_kernel=True`, split like their site's kernel; an `nnx.jit` train step on 8 (forced
host) devices equals the one-device step."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from adapters_jax.methods import get_method
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.splice import add_adapter, set_active
from adapters_jax.train import sharding_rules

assert jax.device_count() == 8, jax.devices()
WIDTH, HIDDEN = 8, 16

def init(axes):
  return nnx.with_partitioning(nnx.initializers.lecun_normal(), axes)

class Mlp(nnx.Module):
  """x [batch, width] -> [batch, 2]: a column-parallel up and a row-parallel down projection."""
  def __init__(self, rngs):
    self.up = nnx.Linear(WIDTH, HIDDEN, kernel_init=init((None, 'model')), rngs=rngs)
    self.down = nnx.Linear(HIDDEN, WIDTH, kernel_init=init(('model', None)), rngs=rngs)
    self.head = nnx.Linear(WIDTH, 2, kernel_init=init((None, None)), rngs=rngs)
  def __call__(self, x):
    return self.head(x + self.down(nnx.relu(self.up(x))))

def build(x):
  model = Mlp(nnx.Rngs(0))
  add_adapter(model, 'lora', get_method('lora', rank=4, sites=((r'up|down', 'parallel'),)),
              jax.random.key(1), x, lora_follows_kernel=True)
  add_adapter(model, 'bottleneck', get_method('pfeiffer', size=4, train_also=(),
                                              sites=(('down', 'output'),)), jax.random.key(2), x)
  set_active(model, ('lora', 'bottleneck'))
  rng = np.random.default_rng(0)  # zero-initialised up-projections: make every leaf count
  state = nnx.state(model, AdapterParam)
  nnx.update(model, jax.tree.map(
      lambda v: jax.device_put(v + 0.3 * rng.standard_normal(v.shape).astype(v.dtype), v.sharding),
      state))
  return model

@nnx.jit
def step(model, optimizer, x, y):
  def loss_fn(model):
    return jnp.mean((model(x) - y) ** 2)
  loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, AdapterParam))(model)
  optimizer.update(model, grads)
  return loss

def padded(spec, ndim):
  return list(spec) + [None] * (ndim - len(spec))  # P('model') is P('model', None)

def run(mesh):
  x = jax.random.normal(jax.random.key(3), (16, WIDTH))
  y = jax.random.normal(jax.random.key(4), (16, 2))
  if mesh is None:
    with nnx.use_eager_sharding(False):
      model = build(x)
      optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)
  else:
    with jax.set_mesh(mesh):
      model = build(x)
      optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)
      x, y = (jax.device_put(a, jax.NamedSharding(mesh, jax.P('data'))) for a in (x, y))
  facts = {}
  for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = '/'.join(map(str, path))
    facts[key] = {'annotation': list(v.get_metadata().get('out_sharding') or []) or None,
                  'spec': padded(getattr(v[...].sharding, 'spec', ()), v[...].ndim),
                  'devices': len(v[...].sharding.device_set)}
  with jax.set_mesh(mesh) if mesh is not None else nnx.use_eager_sharding(False):
    losses = [float(step(model, optimizer, x, y)) for _ in range(3)]
  after = nnx.state(model, AdapterParam)['up']['adapters']['lora']['lora_b'][...]
  moment = [v[...] for p, v in nnx.to_flat_state(nnx.state(optimizer, nnx.OptState))
            if '/'.join(map(str, p)).endswith('up/adapters/lora/lora_b')][0]
  facts['after_steps'] = [padded(getattr(a.sharding, 'spec', ()), 2) for a in (after, moment)]
  leaves = {'/'.join(map(str, p)): np.asarray(v[...]).tolist()
            for p, v in nnx.to_flat_state(nnx.state(model, AdapterParam))}
  return {'losses': losses, 'leaves': leaves, 'facts': facts}

out = {'one': run(None), 'eight': run(sharding_rules.make_mesh(jax.devices(), 2))}
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def runs():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3', 'PYTHONPATH': str(ROOT)}
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_splicing_keeps_the_base_annotations_and_shards_the_adapters_by_the_rules(runs):
  facts = runs['eight']['facts']
  assert facts['up/kernel'] == {'annotation': [None, 'model'], 'spec': [None, 'model'], 'devices': 8}
  assert facts['down/kernel'] == {'annotation': ['model', None], 'spec': ['model', None],
                                  'devices': 8}
  # LoRA follows its site's kernel: A [in, r] its input split, B [r, out] its output split.
  assert facts['up/adapters/lora/lora_b']['spec'] == [None, 'model']
  assert facts['up/adapters/lora/lora_a']['annotation'] == [None, None]
  assert facts['down/adapters/lora/lora_a']['spec'] == ['model', None]
  assert facts['down/adapters/lora/lora_b']['annotation'] == [None, None]
  # The bottleneck is replicated, as every adapter leaf of the Linen runs.
  bottleneck = {k: v for k, v in facts.items() if '/bottleneck/' in k}
  assert bottleneck and all(v['devices'] == 8 and not any(v['spec']) for v in bottleneck.values())
  # After nnx.jit steps, LoRA's B and its Adam moment keep its split.
  assert facts.pop('after_steps') == [[None, 'model'], [None, 'model']]
  assert all(v['devices'] == 1 for k, v in runs['one']['facts'].items() if k != 'after_steps')


@pytest.mark.slow
def test_the_eight_device_step_equals_the_one_device_step(runs):
  one, eight = runs['one'], runs['eight']
  assert one['losses'][-1] < one['losses'][0]
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-5, atol=1e-6)
  assert sorted(eight['leaves']) == sorted(one['leaves'])
  for path in one['leaves']:
    np.testing.assert_allclose(eight['leaves'][path], one['leaves'][path], rtol=1e-4, atol=1e-5, err_msg=path)
