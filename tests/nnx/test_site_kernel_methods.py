"""Methods that read their site's own kernel on the flax-layer NNX hosts: DoRA (at init and at every
call) and LoRA's PiSSA / OLoRA inits (A, B from the kernel; the kernel replaced by the residual).

Checked against float64 numpy written here: DoRA's site output m * (W + s A B) / ||W + s A B||_c
applied to x, PiSSA's A, B against an SVD of the kernel (up to sign), OLoRA's against a QR; then
gradients, merge, the Orbax round trip onto a fresh model, and refusals.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from adapters_jax.checkpoint.save import CheckpointError
from adapters_jax.methods import get_method
from adapters_jax.nnx import checkpoint, merge, splice
from adapters_jax.nnx.adapted_site import AdapterParam
from tests.nnx import hosts

# (host, site pattern, the site module): an nnx.LinearGeneral ([in, heads, head_dim] kernel) and
# an nnx.Linear on each host.
SITES = [
    ('encoder', r'layers/\d+/attn/query', lambda m: m.layers[0].attn.query),
    ('encoder', r'layers/\d+/mlp/up', lambda m: m.layers[0].mlp.up),
    ('decoder', r'blocks/\d+/attention/value', lambda m: m.blocks[0].attention.value),
    ('decoder', r'blocks/\d+/mlp/layers/0', lambda m: m.blocks[0].mlp.layers[0]),
]
RANK = 4


def _kernel64(module) -> np.ndarray:
  """The site's kernel as [in, out] float64 (a LinearGeneral's [in, heads, head_dim] flattened)."""
  kernel = np.asarray(module.kernel[...], np.float64)
  return kernel.reshape(kernel.shape[0], -1)


def _bias64(module) -> np.ndarray:
  return np.asarray(module.bias[...], np.float64).reshape(-1)


def _held(module, name) -> dict[str, np.ndarray]:
  return {k: np.asarray(v[...], np.float64) for k, v in module.adapters[name].items()}


def _site_call(module, x):
  """The site's output [B, T, out] (features flattened), adapters included."""
  y = module(x)
  return np.asarray(y, np.float64).reshape(x.shape[:-1] + (-1,))


def _x(width: int) -> jax.Array:
  return jax.random.normal(jax.random.key(5), (2, hosts.LENGTH, width))  # [B, T, in]


@pytest.mark.parametrize('host,pattern,site', SITES)
def test_dora_site_output_in_float64(host, pattern, site):
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  method = get_method('dora', rank=RANK, sites=((pattern, 'parallel'),))
  splice.add_adapter(model, 'dora', method, jax.random.key(0), ids)
  module = site(model)
  w, b = _kernel64(module), _bias64(module)
  np.testing.assert_allclose(_held(module, 'dora')['magnitude'], np.linalg.norm(w, axis=0),
                             rtol=1e-6)  # m = ||W||_c at init
  hosts.randomize(model, AdapterParam, seed=3)
  p = _held(module, 'dora')
  x = _x(w.shape[0])
  updated = w + method.scaling * p['lora_a'] @ p['lora_b']  # [in, out]
  want = np.asarray(x, np.float64) @ (p['magnitude'] * updated / np.linalg.norm(updated, axis=0)) + b
  with splice.activated(model, 'dora'):
    got = _site_call(module, x)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  assert np.abs(want - (np.asarray(x, np.float64) @ w + b)).max() > 1e-2  # not the base


def test_dora_magnitude_alone_changes_the_output_and_gets_gradients():
  model = hosts.Decoder(nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  splice.add_adapter(model, 'dora', get_method('dora', sites=hosts.preset_sites('decoder', 'dora')),
                     jax.random.key(0), ids)
  splice.set_active(model, 'dora')
  base = model(ids)
  paths = sorted('/'.join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, AdapterParam)))
  assert [p.rsplit('/', 1)[-1] for p in paths] == ['lora_a', 'lora_b', 'magnitude'] * 2

  def loss(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(ids)[:, :-1], ids[:, 1:]).mean()

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, AdapterParam))(model)
  moved = {'/'.join(map(str, p)): float(jnp.abs(g[...]).max()) > 0
           for p, g in nnx.to_flat_state(grads)}
  assert sorted(moved) == paths  # gradients reach the adapter leaves only
  # B starts at zero, so A's gradient is zero; the magnitude's and B's are not.
  assert all(moved[p] == (not p.endswith('lora_a')) for p in paths), moved
  frozen = nnx.state(model, nnx.Not(AdapterParam))
  nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam).update(model, grads)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Not(AdapterParam)), frozen)
  assert float(jnp.abs(model(ids) - base).max()) > 1e-4


@pytest.mark.parametrize('host', sorted(hosts.HOSTS))
def test_dora_merged_equals_unmerged_and_unmerge_is_refused(host):
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  sites = hosts.preset_sites(host, 'dora') + ((hosts.ROLES[host]['ffn_output'], 'parallel'),)
  splice.add_adapter(model, 'dora', get_method('dora', sites=sites), jax.random.key(0), ids)
  hosts.randomize(model, AdapterParam, seed=4)
  splice.set_active(model, 'dora')
  unmerged = model(ids)
  merge.merge_adapter(model, 'dora')
  assert splice.active(model) is None
  np.testing.assert_allclose(model(ids), unmerged, rtol=1e-5, atol=1e-5)
  merged = nnx.state(model, nnx.Not(AdapterParam))
  with pytest.raises(NotImplementedError, match='cannot be unmerged'):
    merge.unmerge_adapter(model, 'dora')
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Not(AdapterParam)), merged)
  assert splice.find_adapter(model, 'dora').merged


def _pissa_reference(w: np.ndarray, scaling: float) -> tuple[np.ndarray, np.ndarray]:
  """A = U_r sqrt(S_r / s), B = sqrt(S_r / s) V_r^T from a float64 SVD of the [in, out] kernel."""
  u, s, vh = np.linalg.svd(w, full_matrices=False)
  root = np.sqrt(s[:RANK] / scaling)
  return u[:, :RANK] * root, root[:, None] * vh[:RANK]


def _olora_reference(w: np.ndarray, scaling: float) -> tuple[np.ndarray, np.ndarray]:
  """A = R_r^T, B = Q_r^T from a float64 QR of the [out, in] weight (as PEFT)."""
  del scaling
  q, r = np.linalg.qr(w.T)
  return r[:RANK].T, q[:, :RANK].T


def _up_to_sign(a, b, a_ref, b_ref):
  """A's columns and B's rows with the signs of the reference's (each component's sign is free)."""
  signs = np.sign(np.sum(a * a_ref, axis=0))  # [r]
  return a * signs, b * signs[:, None]


@pytest.mark.parametrize('init,reference', [('pissa', _pissa_reference),
                                            ('olora', _olora_reference)])
@pytest.mark.parametrize('host,pattern,site', SITES)
def test_principal_inits_take_the_kernel_and_leave_the_residual(init, reference, host, pattern,
                                                                site):
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  base = model(ids)
  w = _kernel64(site(model))
  method = get_method('lora', rank=RANK, init_weights=init, sites=((pattern, 'parallel'),))
  splice.add_adapter(model, 'p', method, jax.random.key(0), ids)
  module = site(model)
  p = _held(module, 'p')
  a_ref, b_ref = reference(w, method.scaling)
  a, b = _up_to_sign(p['lora_a'], p['lora_b'], a_ref, b_ref)
  # float32 decompositions: singular vectors agree to ~eps * ||W|| / (gap between singular values)
  np.testing.assert_allclose(a, a_ref, atol=1e-4)
  np.testing.assert_allclose(b, b_ref, atol=1e-4)
  residual = _kernel64(module)
  np.testing.assert_allclose(residual + method.scaling * p['lora_a'] @ p['lora_b'], w, atol=1e-5)
  assert np.abs(residual - w).max() > 1e-2  # the kernel is the residual now
  splice.set_active(model, 'p')
  np.testing.assert_allclose(model(ids), base, rtol=1e-5, atol=1e-5)  # residual + adapter = base
  splice.set_active(model, None)
  assert float(jnp.abs(model(ids) - base).max()) > 1e-3  # the residual alone is not


@pytest.mark.parametrize('host', sorted(hosts.HOSTS))
def test_pissa_merges_and_refuses_removal(host):
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  method = get_method('lora', rank=RANK, init_weights='pissa_niter_2',
                      sites=hosts.preset_sites(host, 'lora'))
  splice.add_adapter(model, 'p', method, jax.random.key(0), ids)
  hosts.randomize(model, AdapterParam, seed=2, scale=0.05)
  splice.set_active(model, 'p')
  unmerged = model(ids)
  with pytest.raises(ValueError, match='merge_adapter it to keep'):
    splice.remove_adapter(model, 'p')
  merge.merge_adapter(model, 'p')
  np.testing.assert_allclose(model(ids), unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('preset,options', [('dora', {}),
                                            ('lora', dict(init_weights='pissa', rank=RANK))])
@pytest.mark.parametrize('host', sorted(hosts.HOSTS))
def test_orbax_round_trip_rebuilds_the_site_kernels_on_a_fresh_model(host, preset, options,
                                                                     tmp_path):
  ids = hosts.sample_ids()
  model = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  method = get_method(preset, sites=hosts.preset_sites(host, preset), **options)
  splice.add_adapter(model, 'task', method, jax.random.key(0), ids)
  hosts.randomize(model, AdapterParam, seed=6, scale=0.05)
  directory = checkpoint.save_adapter(tmp_path / 'task', model, 'task', base_name='tiny')
  fresh = hosts.HOSTS[host](nnx.Rngs(0), layers=1)
  checkpoint.restore_adapter(directory, fresh, ids, strict=True)  # the base's weights check out
  saved, restored = checkpoint.base_params(model), checkpoint.base_params(fresh)
  jax.tree.map(np.testing.assert_array_equal, restored, saved)  # PiSSA: the same residual kernels
  saved, restored = checkpoint.adapter_arrays(model, 'task'), checkpoint.adapter_arrays(fresh, 'task')
  assert sorted(saved) == sorted(restored)
  for path in saved:
    np.testing.assert_array_equal(restored[path], saved[path], err_msg=path)
  splice.set_active(model, 'task')
  splice.set_active(fresh, 'task')
  np.testing.assert_array_equal(fresh(ids), model(ids))


def test_sites_whose_kernel_layout_is_unknown_are_refused():
  model = hosts.Encoder(nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  before = checkpoint.base_params(model)
  for method in (get_method('dora', sites=((r'layers/\d+/mlp', 'parallel'),)),
                 get_method('lora', init_weights='olora', sites=((r'layers/\d+/mlp', 'parallel'),))):
    with pytest.raises(ValueError, match=r'layers/0/mlp \(Mlp\) has no `kernel` in a known layout'):
      splice.add_adapter(model, 'a', method, jax.random.key(0), ids)
    assert splice.adapted_sites(model) == {}  # nothing half-spliced
  jax.tree.map(np.testing.assert_array_equal, checkpoint.base_params(model), before)


def test_a_pissa_restore_that_does_not_fit_gives_the_kernels_back(tmp_path):
  ids = hosts.sample_ids()
  model = hosts.Encoder(nnx.Rngs(0), layers=1)
  method = get_method('lora', rank=RANK, init_weights='pissa', sites=hosts.preset_sites('encoder',
                                                                                        'lora'))
  splice.add_adapter(model, 'task', method, jax.random.key(0), ids)
  directory = checkpoint.save_adapter(tmp_path / 'task', model, 'task')
  deeper = hosts.Encoder(nnx.Rngs(0), layers=2)  # its block 1 has sites the checkpoint lacks
  before = checkpoint.base_params(deeper)
  with pytest.raises(CheckpointError, match='missing: +layers/1/attn/query/adapters/task/lora_a'), \
      pytest.warns(UserWarning, match='other weights'):
    checkpoint.restore_adapter(directory, deeper, ids, check_base=False)
  assert splice.adapted_sites(deeper) == {}
  jax.tree.map(np.testing.assert_array_equal, checkpoint.base_params(deeper), before)
