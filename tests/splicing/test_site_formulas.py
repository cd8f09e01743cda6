"""Presets and compositions spliced at the tiny model's last module, against float64 formulas.

The site is the classifier (`logits = tanh(x[:, 0]) @ W + b`, [batch, labels]), so what an adapter
does there is the model's output and the reference is a few lines of NumPy on the base model's
own intermediates: Compacter away from its identity init (Kronecker sums with np.kron), the
`parallel` preset (ReLU, scaled by 4, beside the classifier), Average over input-placement (IA)3
adapters, and a fusion inside a Stack.
"""

import jax
import numpy as np
import pytest
from scipy.special import erf

from adapters_jax import Average, Fuse, Stack, adapter_leaves, add_adapter, add_fusion, get_method
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch

LABELS = 4


def _gelu64(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _f64(tree):
  return {k: np.asarray(v, np.float64) for k, v in tree.items()}


@pytest.fixture(scope='module')
def base():
  model = TinyClassifier(num_labels=LABELS)
  params = init_tiny(model)
  ids, mask = tiny_batch()
  logits, state = model.apply({'params': params}, ids, mask, capture_intermediates=True,
                              mutable=['intermediates'])
  encoder_out = np.asarray(state['intermediates']['encoder']['__call__'][0], np.float64)
  features = np.tanh(encoder_out[:, 0])  # [batch, hidden], the classifier's input
  return model, params, (ids, mask), np.asarray(logits, np.float64), features


def _splice(base, name, method, seed=1, spliced=None, params=None):
  model, base_params, (ids, mask), _, _ = base
  spliced, params = add_adapter(spliced or model, base_params if params is None else params, name,
                                method, jax.random.key(seed), ids, mask)
  return spliced, perturb_adapter(params, name, scale=0.5, seed=seed + 10)


def _kron_kernel(rule, s, t):
  """sum_i kron(A_i, s_i t_i): [n*p, n*q] from rule [n, n, n], s [n, p, r], t [n, r, q]."""
  return sum(np.kron(rule[i], s[i] @ t[i]) for i in range(rule.shape[0]))


def test_compacter_away_from_identity_equals_kronecker_formula(base):
  _, _, (ids, mask), logits, _ = base
  method = get_method('compacter', sites=(('classifier', 'output'),), size=4, n=2)
  spliced, params = _splice(base, 'c', method)
  leaves = _f64(adapter_leaves(params, 'c'))
  rule = leaves['adapters/c/shared/rule']  # [2, 2, 2], shared by both projections
  p = {k.removeprefix('classifier/adapters/c/'): v for k, v in leaves.items()}
  down = logits @ _kron_kernel(rule, p['down/s'], p['down/t']) + p['down/bias']
  expected = logits + _gelu64(down) @ _kron_kernel(rule, p['up/s'], p['up/t']) + p['up/bias']
  got = np.asarray(spliced.apply(params, ids, mask, active='c'))
  assert np.abs(expected - logits).max() > 1e-2  # not the identity any more
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_parallel_preset_scales_a_relu_bottleneck_beside_the_module(base):
  _, _, (ids, mask), logits, features = base
  method = get_method('parallel', sites=(('classifier', 'parallel'),), size=3)
  spliced, params = _splice(base, 'par', method)
  p = {k.removeprefix('classifier/adapters/par/'): v for k, v in _f64(adapter_leaves(params, 'par')).items()}
  # The preset's own numbers, written out: ReLU, scaled by 4, input = the classifier's input.
  hidden = np.maximum(features @ p['down/kernel'] + p['down/bias'], 0.0)
  assert (hidden == 0).any() and (hidden > 0).any()  # ReLU differs from GELU/identity here
  expected = logits + 4.0 * (hidden @ p['up/kernel'] + p['up/bias'])
  got = np.asarray(spliced.apply(params, ids, mask, active='par'))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_average_of_input_placement_ia3_scales_the_input_by_the_weighted_vectors(base):
  _, base_params, (ids, mask), _, features = base
  method = get_method('ia3', sites=(('classifier', 'input'),))
  spliced, params = _splice(base, 'a', method, seed=1)
  spliced, params = _splice(base, 'b', method, seed=2, spliced=spliced, params=params)
  scale_a = np.asarray(adapter_leaves(params, 'a')['classifier/adapters/a/scale'], np.float64)
  scale_b = np.asarray(adapter_leaves(params, 'b')['classifier/adapters/b/scale'], np.float64)
  kernel = np.asarray(base_params['classifier']['kernel'], np.float64)  # [hidden, labels]
  bias = np.asarray(base_params['classifier']['bias'], np.float64)
  expected = (features * (0.7 * scale_a + 0.3 * scale_b)) @ kernel + bias
  got = np.asarray(spliced.apply(params, ids, mask, active=Average('a', 'b', weights=(0.7, 0.3))))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  alone = np.asarray(spliced.apply(params, ids, mask, active='a'))
  np.testing.assert_allclose(alone, (features * scale_a) @ kernel + bias, rtol=1e-5, atol=1e-5)


def test_fusion_inside_a_stack_feeds_the_fused_output_to_the_next_adapter(base):
  _, _, (ids, mask), _, _ = base
  bottleneck = get_method('houlsby', sites=(('classifier', 'output'),), size=3)
  spliced, params = _splice(base, 'a', bottleneck, seed=1)
  spliced, params = _splice(base, 'b', bottleneck, seed=2, spliced=spliced, params=params)
  spliced, params = _splice(base, 'c', bottleneck, seed=3, spliced=spliced, params=params)
  spliced, params = add_fusion(spliced, params, ('a', 'b'), jax.random.key(4))
  params = perturb_adapter(params, 'a,b', scale=0.5, seed=5)
  fused = np.asarray(spliced.apply(params, ids, mask, active=Fuse('a', 'b')), np.float64)
  c = {k.removeprefix('classifier/adapters/c/'): v for k, v in _f64(adapter_leaves(params, 'c')).items()}
  # Houlsby's bottleneck by hand on the fused output: h + up(gelu(down(h))).
  expected = fused + _gelu64(fused @ c['down/kernel'] + c['down/bias']) @ c['up/kernel'] + c['up/bias']
  got = np.asarray(spliced.apply(params, ids, mask, active=Stack(Fuse('a', 'b'), 'c')))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # The other order is another model: c first, then the fusion of a and b over c's output.
  other = np.asarray(spliced.apply(params, ids, mask, active=Stack('c', Fuse('a', 'b'))))
  assert np.abs(other - got).max() > 1e-3


def test_two_fusions_of_the_same_adapters_are_picked_by_name(base):
  """Two fusion layers over (a, b) with different weights: Fuse(..., name=) runs the named one
  (their outputs differ), the unnamed Fuse is ambiguous, and a wrong name or order is refused."""
  from adapters_jax.splicing.composition import CompositionError

  _, _, (ids, mask), _, _ = base
  bottleneck = get_method('houlsby', sites=(('classifier', 'output'),), size=3)
  spliced, params = _splice(base, 'a', bottleneck, seed=1)
  spliced, params = _splice(base, 'b', bottleneck, seed=2, spliced=spliced, params=params)
  spliced, params = add_fusion(spliced, params, ('a', 'b'), jax.random.key(4), name='f1')
  spliced, params = add_fusion(spliced, params, ('a', 'b'), jax.random.key(5), name='f2')
  for seed, name in enumerate(('a', 'b', 'f1', 'f2')):
    params = perturb_adapter(params, name, scale=0.5, seed=10 + seed)
  one = np.asarray(spliced.apply(params, ids, mask, active=Fuse('a', 'b', name='f1')))
  two = np.asarray(spliced.apply(params, ids, mask, active=Fuse('a', 'b', name='f2')))
  assert np.abs(one - two).max() > 1e-3
  # A fusion's name alone runs that fusion.
  np.testing.assert_array_equal(np.asarray(spliced.apply(params, ids, mask, active='f2')), two)
  # f1 alone in a model without f2 gives f1's output: the name picked f1's weights.
  only, only_params = _splice(base, 'a', bottleneck, seed=1)
  only, only_params = _splice(base, 'b', bottleneck, seed=2, spliced=only, params=only_params)
  only, only_params = add_fusion(only, only_params, ('a', 'b'), jax.random.key(4), name='f1')
  for seed, name in enumerate(('a', 'b', 'f1')):
    only_params = perturb_adapter(only_params, name, scale=0.5, seed=10 + seed)
  np.testing.assert_allclose(np.asarray(only.apply(only_params, ids, mask, active=Fuse('a', 'b'))),
                             one, rtol=1e-6, atol=1e-6)
  for active, message in ((Fuse('a', 'b'), "Several fusion layers fuse \\['a', 'b'\\]: \\['f1', 'f2'\\]"),
                          (Fuse('b', 'a', name='f1'), "fuses \\['a', 'b'\\], not \\['b', 'a'\\]"),
                          (Fuse('a', 'b', name='a'), "'a' is not a fusion layer")):
    with pytest.raises(CompositionError, match=message):
      spliced.apply(params, ids, mask, active=active)
  # Word for word: a fusion over adapters no fusion layer fuses (with and without fusions spliced),
  # and a fusion given where Fuse takes adapters.
  unfused, unfused_params = _splice(base, 'a', bottleneck, seed=1)
  unfused, unfused_params = _splice(base, 'b', bottleneck, seed=2, spliced=unfused,
                                    params=unfused_params)
  for host, host_params, have in ((unfused, unfused_params, 'none'),
                                  (only, only_params, "{'f1': ['a', 'b']}")):
    with pytest.raises(CompositionError) as error:
      host.apply(host_params, ids, mask, active=Fuse('b', 'a'))
    assert str(error.value) == (
        "No fusion layer fuses ['b', 'a'] (in that order); splice one with "
        "adapters_jax.add_fusion(spliced, params, ['b', 'a'], rng) or restore a fusion "
        f'checkpoint. Spliced fusions: {have}.')
  with pytest.raises(CompositionError) as error:
    spliced.apply(params, ids, mask, active=Fuse('a', 'f1'))
  assert str(error.value) == "Fuse cannot take the fusion 'f1'; stack it instead: Stack('f1', ...)."
