"""LoRA / (IA)3 merged into NNX kernels equal the unmerged adapters; adapter-only Orbax checkpoints
restore bit-identically onto a freshly built model."""

import os

import jax
import numpy as np
import pytest
from flax import nnx

from adapters_jax.checkpoint.save import CheckpointError, load_record
from adapters_jax.methods import get_method
from adapters_jax.nnx import checkpoint, merge, splice
from adapters_jax.nnx.adapted_site import AdapterParam
from tests.nnx import hosts


def _spliced(host, name, method, seed=4):
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  splice.add_adapter(model, name, method, jax.random.key(0), ids)
  hosts.randomize(model, AdapterParam, seed=seed)
  return model, ids


@pytest.mark.parametrize('host,preset', [('encoder', 'lora'), ('decoder', 'lora'), ('encoder', 'ia3')])
def test_merged_equals_unmerged_and_unmerge_restores_the_kernels(host, preset):
  # Encoder LoRA: MultiHeadAttention's query/value, LinearGeneral kernels [in, heads, head_dim];
  # decoder LoRA: plain Linear kernels; (IA)3 also rescales an input (the FFN's down projection).
  sites = {'lora': ((r'.*/(query|value)', 'parallel'), (r'.*mlp/(up|layers/0)', 'parallel')),
           'ia3': ((r'.*/value', 'output'), (r'.*mlp/down', 'input'))}[preset]
  model, ids = _spliced(host, 'a', get_method(preset, sites=sites))
  base_kernels = nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam)))
  splice.set_active(model, 'a')
  unmerged = model(ids)
  merge.merge_adapter(model, 'a')
  assert splice.active(model) is None  # the merged adapter does not also run as an adapter
  np.testing.assert_allclose(model(ids), unmerged, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='merged'):
    splice.set_active(model, 'a')
  with pytest.raises(ValueError, match='unmerge_adapter it'):
    splice.remove_adapter(model, 'a')
  merge.unmerge_adapter(model, 'a')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam))), base_kernels)


def test_bottlenecks_refuse_to_merge():
  model, _ = _spliced('decoder', 'h', get_method('pfeiffer', sites=(('lm_head', 'output'),)))
  with pytest.raises(NotImplementedError, match='only LoRA, VeRA, DoRA and \\(IA\\)3'):
    merge.merge_adapter(model, 'h')


@pytest.mark.parametrize('preset', ['lora', 'compacter'])
def test_orbax_round_trip_is_bit_identical_on_a_fresh_model(tmp_path, preset):
  sites = {'lora': ((r'.*/(query|value)', 'parallel'),),
           'compacter': ((r'.*/out', 'output'), (r'.*mlp/down', 'output'))}[preset]
  method = get_method(preset, sites=sites, **({'size': 4} if preset == 'compacter' else {}))
  model, ids = _spliced('encoder', 'task', method)
  directory = checkpoint.save_adapter(tmp_path / 'task', model, 'task', base_name='tiny-encoder')
  record = load_record(directory)
  assert record['adapter'] == 'task' and record['method']['kind'] == method.kind
  assert record['trained_paths'] == sorted(checkpoint.adapter_arrays(model, 'task'))

  fresh = hosts.Encoder(nnx.Rngs(0), layers=1)
  checkpoint.restore_adapter(directory, fresh, ids)
  saved, restored = checkpoint.adapter_arrays(model, 'task'), checkpoint.adapter_arrays(fresh, 'task')
  assert sorted(saved) == sorted(restored)
  for path in saved:
    np.testing.assert_array_equal(restored[path], saved[path], err_msg=path)
  splice.set_active(model, 'task')
  splice.set_active(fresh, 'task')
  np.testing.assert_array_equal(fresh(ids), model(ids))


def test_restore_refuses_another_base_and_a_damaged_checkpoint(tmp_path):
  model, ids = _spliced('encoder', 'task', get_method('lora', sites=((r'.*/query', 'parallel'),)))
  directory = checkpoint.save_adapter(tmp_path / 'task', model, 'task')
  wider = hosts.Encoder(nnx.Rngs(0), layers=2)
  with pytest.raises(CheckpointError, match='other parameter shapes'):
    checkpoint.restore_adapter(directory, wider, ids)
  with pytest.warns(UserWarning, match='other weights'):
    checkpoint.restore_adapter(directory, hosts.Encoder(nnx.Rngs(1), layers=1), ids)
  os.remove(os.path.join(directory, 'record', 'metadata'))
  with pytest.raises(CheckpointError, match='not a complete adapter checkpoint'):
    checkpoint.restore_adapter(directory, hosts.Encoder(nnx.Rngs(0), layers=1), ids)
