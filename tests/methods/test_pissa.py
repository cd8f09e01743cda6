"""PiSSA and OLoRA (`LoRAConfig.init_weights`): A and B from the site's kernel, the residual left
frozen; against float64 NumPy, PEFT 0.21.2's LoRA layer, and through the splice checks."""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import traverse_util

from adapters_jax import add_adapter, average_adapter, get_method, remove_adapter
from adapters_jax.methods import LoRA
from adapters_jax.methods.lora_init import principal_factors
from tests.methods import splice_checks

IN, OUT, RANK, ALPHA = 12, 10, 4, 6.0


def _kernel(seed=0):
  """[in, out] float32 with well separated singular values (the randomized SVD converges)."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(IN, IN)))
  v, _ = np.linalg.qr(rng.normal(size=(OUT, OUT)))
  return (u[:, :OUT] * np.geomspace(8.0, 0.05, OUT)) @ v.T


def _reference(kernel, init, scaling):
  """float64 A [in, r], B [r, out] as the papers (and PEFT) define them."""
  kernel = np.asarray(kernel, np.float64)
  if init == 'olora':
    q, r = np.linalg.qr(kernel.T)  # of the [out, in] weight
    return r[:RANK].T, q[:, :RANK].T
  u, s, vh = np.linalg.svd(kernel, full_matrices=False)
  root = np.sqrt(s[:RANK] / scaling)
  return u[:, :RANK] * root, root[:, None] * vh[:RANK]


def _align(a, b, a_ref, b_ref):
  """a, b with each rank-1 component's sign flipped to match the reference (a free choice of
  every SVD/QR implementation; a_i b_i is the same either way)."""
  signs = np.sign(np.sum(np.asarray(a) * a_ref, axis=0))  # [r]
  return np.asarray(a) * signs, np.asarray(b) * signs[:, None]


@pytest.mark.parametrize('init', ['pissa', 'olora'])
@pytest.mark.parametrize('rslora', [False, True])
def test_factors_and_residual_match_float64(init, rslora):
  scaling = ALPHA / (np.sqrt(RANK) if rslora else RANK)
  kernel = _kernel()
  a, b = principal_factors(jnp.asarray(kernel, jnp.float32), RANK, scaling, init)
  a_ref, b_ref = _reference(kernel, init, scaling)
  a, b = _align(a, b, a_ref, b_ref)
  np.testing.assert_allclose(a, a_ref, atol=1e-5)
  np.testing.assert_allclose(b, b_ref, atol=1e-5)
  # The residual is what the base keeps: W - s A B, and (PiSSA) its top singular value is S_{r+1}.
  residual = kernel - scaling * a_ref @ b_ref
  np.testing.assert_allclose(kernel - scaling * a @ b, residual, atol=1e-5)
  if init == 'pissa':
    np.testing.assert_allclose(np.linalg.norm(residual, 2), np.geomspace(8.0, 0.05, OUT)[RANK],
                               rtol=1e-6)


def test_randomized_svd_finds_the_principal_subspace():
  kernel = _kernel(1)
  a, b = principal_factors(jnp.asarray(kernel, jnp.float32), RANK, 1.5, 'pissa_niter_8')
  a_ref, b_ref = _reference(kernel, 'pissa', 1.5)
  np.testing.assert_allclose(np.asarray(a) @ np.asarray(b), a_ref @ b_ref, atol=1e-4)
  again = principal_factors(jnp.asarray(kernel, jnp.float32), RANK, 1.5, 'pissa_niter_8')
  np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(a))  # a fixed sketch: same residual


@pytest.mark.parametrize('init', ['pissa', 'olora'])
def test_init_matches_peft_lora_layer(init):
  """PEFT's layer, initialised by `init_lora_weights` on the same weight: same A, B (up to each
  component's sign) and the same residual base weight; both start as the base layer."""
  weight = _kernel(2).T.astype(np.float32)  # torch [out, in]
  host = torch.nn.Sequential()
  host.add_module('query', torch.nn.Linear(IN, OUT))
  with torch.no_grad():
    host.query.weight.copy_(torch.tensor(weight))
  model = peft.get_peft_model(host, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=init,
                                                    target_modules=['query']))
  layer = model.base_model.model.query
  theirs_a = layer.lora_A['default'].weight.detach().numpy().T  # [in, r]
  theirs_b = layer.lora_B['default'].weight.detach().numpy().T  # [r, out]
  theirs_residual = layer.base_layer.weight.detach().numpy().T  # [in, out]

  module = LoRA(out_features=OUT, rank=RANK, alpha=ALPHA, init_weights=init, kernel_layout='out_in')
  x = jax.random.normal(jax.random.key(0), (2, IN))
  params = module.init(jax.random.key(1), x, site_params={'kernel': jnp.asarray(weight)})['params']
  a, b = _align(params['lora_a'], params['lora_b'], theirs_a, theirs_b)
  np.testing.assert_allclose(a, theirs_a, atol=1e-4)
  np.testing.assert_allclose(b, theirs_b, atol=1e-4)
  ours_residual = weight.T - (ALPHA / RANK) * np.asarray(params['lora_a']) @ np.asarray(params['lora_b'])
  np.testing.assert_allclose(ours_residual, theirs_residual, atol=1e-5)
  with torch.no_grad():
    theirs_out = layer(torch.tensor(np.asarray(x))).numpy()
  ours_out = np.asarray(x) @ ours_residual + np.asarray(host.query.bias.detach()) + np.asarray(
      module.apply({'params': params}, x))
  np.testing.assert_allclose(ours_out, theirs_out, atol=1e-5)
  np.testing.assert_allclose(ours_out, np.asarray(x) @ weight.T + host.query.bias.detach().numpy(),
                             atol=1e-5)  # = the base layer


METHODS = {init: get_method('lora', rank=4, alpha=6.0, init_weights=init)
           for init in ('pissa', 'pissa_niter_2', 'olora')}


def _site_kernels(method, family):
  """The first site's kernel in the base params and in the spliced params."""
  _, spliced, params, new_params, _ = splice_checks.spliced_host(method, family)
  path = spliced.adapter('a').sites[0].path + '/kernel'
  before, after = (traverse_util.flatten_dict(p, sep='/')[path] for p in (params, new_params))
  return np.asarray(before), np.asarray(after)


# Every init on BERT; PiSSA and OLoRA also under nn.scan and on GPT-2 (Conv1D-style names).
CASES = [(init, 'bert') for init in METHODS] + [(init, family) for init in ('pissa', 'olora')
                                                 for family in ('bert-scan', 'gpt2')]


@pytest.mark.parametrize('init,family', CASES)
def test_spliced_model_starts_as_the_base(init, family):
  splice_checks.check_splices_at_lora_sites_as_identity(METHODS[init], family, {'lora_a', 'lora_b'})
  before, after = _site_kernels(METHODS[init], family)
  assert np.abs(before - after).max() > 0.1 * np.abs(before).max()  # the residual is frozen now


@pytest.mark.parametrize('init,family', [('pissa', 'bert'), ('olora', 'bert-scan'), ('pissa', 'gpt2')])
def test_merge_equals_unmerged(init, family):
  splice_checks.check_merge_equals_unmerged(METHODS[init], family)


@pytest.mark.parametrize('init,family', [('pissa', 'bert'), ('pissa_niter_2', 'bert'),
                                         ('olora', 'gpt2')])
def test_checkpoint_restores_onto_a_fresh_base(init, family, tmp_path, recwarn):
  # restore_adapter gets the original base params: the residual is rebuilt from them. The base is
  # recognised as the one trained on (the residual kernels stay out of the weights fingerprint).
  splice_checks.check_checkpoint_round_trip(METHODS[init], family, tmp_path)
  assert not [w for w in recwarn if 'other weights' in str(w.message)]


def test_one_step_moves_only_its_leaves():
  splice_checks.check_one_step_moves_only_its_leaves(METHODS['pissa'], 'bert')


def test_refusals():
  with pytest.raises(ValueError, match=r"valid: \['default', 'pissa', 'pissa_niter_<K>', 'olora'\]"):
    get_method('lora', init_weights='svd')
  model, params, inputs, _ = splice_checks.host('bert')
  with pytest.raises(ValueError, match='rank <= min'):
    add_adapter(model, params, 'a', get_method('lora', rank=64, init_weights='pissa'),
                jax.random.key(0), *inputs)
  _, spliced, _, new_params, _ = splice_checks.spliced_host(METHODS['pissa'], 'bert')
  with pytest.raises(ValueError, match='merge_adapter it'):
    remove_adapter(spliced, new_params, 'a')
  with pytest.raises(ValueError, match='cannot be averaged'):
    average_adapter(spliced, new_params, 'b', ['a'])
