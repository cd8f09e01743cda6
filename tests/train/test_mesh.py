"""Data parallelism and FSDP through the loop's placement: 8 (forced host) devices give the same
losses as 1 device."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r'''
import json, sys
import jax, numpy as np
from flax import traverse_util
from adapters_jax import data
from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer, placement, programs
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.step import create_train_state
from experiments.configs import quickstart

assert jax.device_count() == 8, jax.devices()
config = quickstart.get_config('smoke')
config.model = sys.argv[1]
task = data.load_task('rotten_tomatoes')
experiment = build_experiment(config, task.spec)
encoded = data.encode(task['train'][:200], experiment.pretrained.tokenizer, 64)
batches = list(data.TrainBatches(encoded, 16, seed=0).batches(0))[:4]
losses = {}
for n, strategy in ((1, 'data'), (8, 'data'), ('8_fsdp', 'fsdp')):
  config.sharding = strategy
  arrays = placement.Placement.from_config(config, jax.devices()[:1 if n == 1 else 8])
  mesh = arrays.mesh
  tx = optimizer.adamw(1e-3)
  train_params, frozen = trainable.split(experiment.params, experiment.mask)
  state = create_train_state(train_params, tx, jax.random.PRNGKey(0))
  state, frozen = arrays.place(state, frozen)
  step_fn = arrays.pin_train_step(programs.make_step_fns(experiment, tx)[0], state, frozen)
  out = []
  for batch in batches:
    state, metrics = step_fn(state, frozen, placement.shard_batch(batch, mesh))
    out.append(float(metrics['loss']))
  losses[n] = out
  losses[f'{n}_compiles'] = step_fn._cache_size()
  leaf = jax.tree.leaves(state.params)[0]
  losses[f'{n}_devices'] = len(leaf.sharding.device_set)
  kernel = next(v for k, v in traverse_util.flatten_dict(frozen, sep='/').items()
                if k.endswith('layer_0/ffn/intermediate/kernel'))  # [32, 64]
  losses[f'{n}_kernel_shard'] = list(kernel.addressable_shards[0].data.shape)
print(json.dumps(losses))
'''


@pytest.mark.slow
def test_eight_devices_give_the_same_loss_as_one(tiny_bert_dir):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  proc = subprocess.run([sys.executable, '-c', SCRIPT, tiny_bert_dir], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  losses = json.loads(proc.stdout.strip().splitlines()[-1])
  assert losses['1_devices'] == 1 and losses['8_devices'] == 8
  assert losses['8_fsdp_devices'] == 8
  # The state keeps its placement step after step: one compile per run.
  assert [losses[f'{n}_compiles'] for n in ('1', '8', '8_fsdp')] == [1, 1, 1]
  # FFN kernel [hidden 32, intermediate 64]: whole under data parallelism, 1/8 of its largest
  # dim per device under FSDP.
  full = losses['1_kernel_shard']
  assert losses['8_kernel_shard'] == full
  assert full == [32, 64] and losses['8_fsdp_kernel_shard'] == [32, 8]
  one = losses['1']
  assert len(one) == 4
  for other in (losses['8'], losses['8_fsdp']):
    for a, b in zip(one, other, strict=True):
      assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (one, other)
  assert one[0] != one[-1]  # training moved
