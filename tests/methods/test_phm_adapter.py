"""PHM-Adapter (the Compacter paper's row): full B_i and a rule of its own in every PHM layer.

Checked against float64 NumPy (explicit `np.kron`), a hand count of its parameters, AdapterHub
`adapters` 1.3.0's own PHM layer (export to it, import from it) on a tiny PyTorch BERT. The
Compacter table's PHM-Adapter run is trained on the dry run's random T5 in
`tests/sweeps/test_dry_run.py`.
"""

import adapters
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import erf

from adapters_jax import adapter_leaves, add_adapter, get_method, method_from_dict
from adapters_jax.interop import export_checkpoint, import_checkpoint
from adapters_jax.methods import SiteInfo
from tests.interop.conftest import (  # noqa: F401 (base_dir is a fixture)
  assert_close,
  base_dir,
  our_logits,
  save_trained,
)
from tests.interop.test_adapterhub_export import load_in_adapters
from tests.interop.test_adapterhub_import import restore, save_in_adapters
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch


def _gelu64(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _kron_kernel(rule, factors):
  """sum_i kron(A_i, B_i): [n*p, n*q] from rule [n, n, n] and factors [n, p, q]."""
  return sum(np.kron(rule[i], factors[i]) for i in range(rule.shape[0]))


def _site(features, path='encoder/layer_0/ffn/output'):
  return SiteInfo(path=path, placement='output', in_features=features, out_features=features)


def test_preset_is_the_papers_phm_adapter():
  method = get_method('phm_adapter')
  assert (method.n, method.rank, method.shared_rule, method.reduction_factor) == (12, None, False, 32)
  assert method.make_shared_module() is None  # no `adapters/<name>/shared` subtree
  assert [place for _, place in method.sites] == ['output', 'output']  # Houlsby placement
  # The checkpoint record (JSON, rank null) rebuilds the same config.
  assert method_from_dict(method.to_dict()) == method


def test_forward_equals_float64_kronecker_formula():
  # Width 24, bottleneck 8, n = 4: B_i are [6, 2] and [2, 6], not square, so a transposed or
  # swapped Kronecker product shows.
  method = get_method('phm_adapter', n=4, size=8)
  module = method.make_module(_site(24))
  x = jax.random.normal(jax.random.key(0), (2, 3, 24))  # [batch, seq, hidden]
  params = module.init(jax.random.key(1), x)['params']
  shapes = {k: v.shape for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  assert shapes == {'down/factors': (4, 6, 2), 'down/bias': (8,), 'down/rule': (4, 4, 4),
                    'up/factors': (4, 2, 6), 'up/bias': (24,), 'up/rule': (4, 4, 4)}
  # Away from the identity init: every leaf random (the up factors start at zero).
  rng = np.random.default_rng(0)
  p64 = {k: rng.normal(0.0, 0.5, shape) for k, shape in shapes.items()}
  params = traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in p64.items()},
                                        sep='/')
  got = np.asarray(module.apply({'params': params}, x))
  x64 = np.asarray(x, np.float64)
  hidden = _gelu64(x64 @ _kron_kernel(p64['down/rule'], p64['down/factors']) + p64['down/bias'])
  want = x64 + hidden @ _kron_kernel(p64['up/rule'], p64['up/factors']) + p64['up/bias']
  assert np.abs(want - x64).max() > 1.0  # the adapter does something
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_starts_as_the_identity():
  module = get_method('phm_adapter', n=4, size=8).make_module(_site(24))
  x = jax.random.normal(jax.random.key(0), (2, 24))
  params = module.init(jax.random.key(1), x)
  np.testing.assert_array_equal(np.asarray(module.apply(params, x)), np.asarray(x))


@pytest.fixture(scope='module')
def spliced_tiny():
  """The tiny classifier (hidden 16, 2 layers) with PHM-Adapter n=4, bottleneck 8 at 4 sites."""
  model = TinyClassifier(num_labels=3)
  ids, mask = tiny_batch()
  spliced, params = add_adapter(model, init_tiny(model), 'p', get_method('phm_adapter', n=4, size=8),
                                jax.random.key(0), ids, mask)
  return spliced, params, (ids, mask)


def test_every_phm_layer_owns_a_rule_that_trains_independently(spliced_tiny):
  spliced, params, (ids, mask) = spliced_tiny
  leaves = adapter_leaves(params, 'p')
  assert not [k for k in leaves if '/shared/' in k]
  rules = {k: np.asarray(v) for k, v in leaves.items() if k.endswith('/rule')}
  # 2 layers x (attention output, FFN output) x (down, up).
  assert len(rules) == 8
  values = list(rules.values())
  assert all(not np.array_equal(a, b) for i, a in enumerate(values) for b in values[i + 1:])
  assert all(0.005 < v.std() < 0.02 for v in values)  # normal(0.01) init, as the authors'

  params = perturb_adapter(params, 'p', scale=0.5)

  def loss(p):
    return jnp.sum(spliced.apply(p, ids, mask, active='p') ** 2)

  grads = adapter_leaves(jax.grad(loss)(params), 'p')
  for path in rules:
    assert np.abs(np.asarray(grads[path])).max() > 1e-6, f'no gradient reaches {path}'
  # Changing one layer's rule changes the output: each rule is read by its own layer only.
  flat = traverse_util.flatten_dict(params, sep='/')
  path = 'encoder/layer_1/attention/output/adapters/p/up/rule'
  before = np.asarray(spliced.apply(params, ids, mask, active='p'))
  flat[path] = flat[path] + 1.0
  after = np.asarray(spliced.apply(traverse_util.unflatten_dict(flat, sep='/'), ids, mask, active='p'))
  assert np.abs(after - before).max() > 1e-4


def test_parameter_count_matches_a_hand_count(spliced_tiny):
  _, params, _ = spliced_tiny
  sizes = {k: v.size for k, v in adapter_leaves(params, 'p').items()}
  # Per site (d = 16, m = 8, n = 4): down 16*8/4 + 8 + 4^3 = 104, up 16*8/4 + 16 + 4^3 = 112.
  assert sum(sizes.values()) == 4 * (104 + 112)
  # T5-base's width with the paper's n = 12 at reduction factor 32 (m = 24): two [12, 64, 2] / [12, 2, 64]
  # B tensors, biases 24 + 768 and two [12, 12, 12] rules: 1536 + 1536 + 792 + 3456 = 7320.
  module = get_method('phm_adapter').make_module(_site(768))
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 768)))['params']
  assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == 7320


def test_bad_options_name_the_fix():
  with pytest.raises(ValueError, match=r'n=12 to divide the width \(16 at encoder/layer_0/ffn/output\)'):
    get_method('phm_adapter', size=12).make_module(_site(16))
  with pytest.raises(ValueError, match=r'and the bottleneck \(24\)'):
    get_method('phm_adapter', n=16).make_module(_site(768))
  with pytest.raises(ValueError, match='rank=None for full'):
    get_method('phm_adapter', rank=0)
  with pytest.raises(ValueError, match='n >= 1'):
    get_method('phm_adapter', n=0)
  shared_module = get_method('compacter', size=8).make_module(_site(16))
  with pytest.raises(ValueError, match='shared_rule=True.*without them'):
    shared_module.init(jax.random.key(0), jnp.zeros((1, 16)))


@pytest.mark.parametrize('options', [dict(), dict(rank=2, shared_rule=True), dict(rank=None,
                                                                                  shared_rule=True)],
                         ids=['phm_adapter', 'rank2_shared', 'full_shared'])
def test_export_loads_in_adapters_with_our_logits(tmp_path, base_dir, options):  # noqa: F811 (the imported fixture)
  # Tiny BERT, hidden 32: n = 4 divides it and the bottleneck 8.
  spliced, params, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'phm_adapter',
                                             n=4, size=8, **options)
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  theirs, base = load_in_adapters(base_dir, 'bert', exported)
  assert_close(our_logits(spliced, params, 'bert', 'task'), theirs, base)


def test_import_from_adapters_per_layer_full_phm(tmp_path, base_dir):  # noqa: F811 (the imported fixture)
  config = adapters.CompacterConfig(reduction_factor=4, factorized_phm_W=False, shared_phm_rule=False)
  saved, theirs, base = save_in_adapters(tmp_path, base_dir, 'bert', config)
  checkpoint = import_checkpoint(saved, 'adapters', model=str(base_dir('bert')), out=tmp_path / 'ours')
  spliced, params = restore(checkpoint, base_dir, 'bert')
  assert spliced.adapter('task').method == get_method('phm_adapter', n=4, size=8, activation='gelu',
                                                      train_also=spliced.adapter('task').method.train_also)
  assert_close(our_logits(spliced, params, 'bert', 'task'), theirs, base)

