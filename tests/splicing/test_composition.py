"""Composition at apply time on the tiny model, each checked against an independent reference:
separate splices, single-example runs, hand-written sums."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import traverse_util

from adapters_jax import adapter_leaves, add_adapter, get_method
from adapters_jax.splicing.averaging import average_adapter
from adapters_jax.splicing.composition import (
    Average,
    CompositionError,
    Fuse,
    Parallel,
    PerExample,
    Stack,
    choice_index,
)
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch

TOL = dict(rtol=1e-5, atol=1e-6)


_perturb = functools.partial(perturb_adapter, scale=0.3)


@pytest.fixture(scope='module')
def setup():
  """Tiny model with bottleneck adapters a (houlsby), b (pfeiffer), LoRA l1, l2 and (IA)3 s."""
  model = TinyClassifier()
  base = init_tiny(model)
  ids, mask = tiny_batch(batch=4)
  methods = {'a': get_method('houlsby', size=4), 'b': get_method('pfeiffer'),
             'l1': get_method('lora', rank=2), 'l2': get_method('lora', rank=3, alpha=4.0),
             's': get_method('ia3')}
  spliced, params = model, base
  for i, (name, method) in enumerate(methods.items()):
    spliced, params = add_adapter(spliced, params, name, method, jax.random.key(i), ids, mask)
    params = _perturb(params, name, seed=i)
  return model, base, spliced, params, ids, mask, methods


def _solo(setup, name):
  """An independent splice holding only adapter `name` with the same weights."""
  model, base, spliced, params, ids, mask, methods = setup
  solo, p = add_adapter(model, base, name, methods[name], jax.random.key(99), ids, mask)
  flat = traverse_util.flatten_dict(p, sep='/')
  flat.update(adapter_leaves(params, name))
  return solo, traverse_util.unflatten_dict(flat, sep='/')


def _site_params(params, path, name):
  node = params
  for key in path.split('/') + ['adapters', name]:
    node = node[key]
  return node


def _bottleneck64(p, x, activation):
  """x + up(act(down(x))) in float64 NumPy (scaling 1, no layer norm)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  h = activation(x @ p['down']['kernel'] + p['down']['bias'])
  return x + h @ p['up']['kernel'] + p['up']['bias']


def _gelu64(x):
  return 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))


def _with_site_functions(model, base, ids, mask, functions):
  """The base model with `functions[path](y)` (float64) replacing the output y of the module at path."""

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    path = '/'.join(context.module.path)
    if context.method_name == '__call__' and path in functions:
      out = jnp.asarray(functions[path](np.asarray(out, np.float64)), out.dtype)
    return out

  with nn.intercept_methods(intercept):
    return model.apply({'params': base}, ids, mask)


def test_stack_equals_a_hand_written_sequential_application(setup):
  model, base, spliced, params, ids, mask, _ = setup
  # a: Houlsby (GELU) after the attention and FFN outputs; b: Pfeiffer (ReLU) after the FFN output.
  activations = {'a': _gelu64, 'b': lambda v: np.maximum(v, 0.0)}
  sites = {'a': [s.path for s in spliced.adapter('a').sites],
           'b': [s.path for s in spliced.adapter('b').sites]}

  def reference(order):
    functions = {}
    for path in sites['a']:
      def apply(y, path=path):
        for name in order:
          if path in sites[name]:
            y = _bottleneck64(_site_params(params, path, name), y, activations[name])
        return y
      functions[path] = apply
    return _with_site_functions(model, base, ids, mask, functions)

  forward, backward = reference(('a', 'b')), reference(('b', 'a'))
  assert not np.allclose(forward, backward, atol=1e-4)  # the order matters on these weights
  np.testing.assert_allclose(spliced.apply(params, ids, mask, active=Stack('a', 'b')), forward,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(spliced.apply(params, ids, mask, active=('b', 'a')), backward,
                             rtol=1e-5, atol=1e-5)


def test_parallel_equals_each_single_run(setup):
  _, _, spliced, params, ids, mask, _ = setup
  out = spliced.apply(params, ids, mask, active=Parallel('a', None, Stack('l1', 's')))
  assert out.shape == (3,) + spliced.apply(params, ids, mask).shape
  np.testing.assert_allclose(out[0], _solo(setup, 'a')[0].apply(_solo(setup, 'a')[1], ids, mask,
                                                                  active='a'), **TOL)
  np.testing.assert_allclose(out[1], setup[0].apply({'params': setup[1]}, ids, mask), **TOL)
  np.testing.assert_allclose(out[2], spliced.apply(params, ids, mask, active=('l1', 's')), **TOL)


def test_parallel_with_mutable_collections_splits_the_output_and_returns_the_state(setup):
  # Bug caught: with `mutable=`, the (output, state) pair not unpacked before the split.
  _, _, spliced, params, ids, mask, _ = setup
  out, state = spliced.apply(params, ids, mask, active=Parallel('a', 'l1'), mutable=['intermediates'])
  assert isinstance(state, dict)
  np.testing.assert_allclose(out[0], spliced.apply(params, ids, mask, active='a'), **TOL)
  np.testing.assert_allclose(out[1], spliced.apply(params, ids, mask, active='l1'), **TOL)


def test_apply_calls_the_method_it_is_given_with_the_adapters_active(setup):
  # Bug caught: `method=` not passed on to the host (its __call__ runs instead).
  _, _, spliced, params, ids, mask, _ = setup
  logits = np.asarray(spliced.apply(params, ids, mask, active='a'), np.float64)
  probabilities = spliced.apply(params, ids, mask, active='a',
                                method=lambda module, i, m: jax.nn.softmax(module(i, m)))
  np.testing.assert_allclose(probabilities, scipy.special.softmax(logits, axis=-1), **TOL)


def test_per_example_equals_each_example_alone_and_compiles_once(setup):
  _, _, spliced, params, ids, mask, _ = setup
  branches = PerExample('a', 'l1', Stack('s', 'b'))
  choices = ['l1', None, Stack('s', 'b'), 'a']
  index = choice_index(branches, choices)
  np.testing.assert_array_equal(index, [1, -1, 2, 0])
  traces = []

  @jax.jit
  def run(p, i, m, idx):
    traces.append(1)
    return spliced.apply(p, i, m, active=branches, adapter_index=idx)

  mixed = run(params, ids, mask, index)
  for row, choice in enumerate(choices):
    alone = spliced.apply(params, ids[row:row + 1], mask[row:row + 1],
                          active=choice.children if isinstance(choice, Stack) else choice)
    np.testing.assert_allclose(mixed[row], alone[0], **TOL)
  again = run(params, ids, mask, np.asarray([0, 0, 2, -1], np.int32))
  np.testing.assert_allclose(again[0], spliced.apply(params, ids[:1], mask[:1], active='a')[0],
                             **TOL)
  assert len(traces) == 1


def test_average_weights_select_and_mix(setup):
  _, _, spliced, params, ids, mask, _ = setup
  # Weight (1, 0) is adapter a alone (b's sites then keep y); (0, 1) is b alone.
  np.testing.assert_allclose(spliced.apply(params, ids, mask, active=Average('a', 'b', weights=(1, 0))),
                             spliced.apply(params, ids, mask, active='a'), **TOL)
  np.testing.assert_allclose(spliced.apply(params, ids, mask, active=Average('a', 'b', weights=(0, 2))),
                             spliced.apply(params, ids, mask, active='b'), **TOL)
  mixed = spliced.apply(params, ids, mask, active=Average('a', 'b'))
  assert not np.allclose(mixed, spliced.apply(params, ids, mask, active='a'))


def test_lora_parameter_average_equals_output_average(setup):
  _, _, spliced, params, ids, mask, _ = setup
  merged_spliced, merged = average_adapter(spliced, params, 'avg', ['l1', 'l2'], weights=(0.25, 0.75))
  by_params = merged_spliced.apply(merged, ids, mask, active='avg')
  by_outputs = merged_spliced.apply(merged, ids, mask, active=Average('l1', 'l2',
                                                                      weights=(0.25, 0.75)))
  np.testing.assert_allclose(by_params, by_outputs, rtol=1e-5, atol=1e-5)
  assert merged_spliced.adapter('avg').method.rank == 5
  # (IA)3 scales average exactly too; bottlenecks refuse 'exact'.
  with pytest.raises(ValueError, match="how='linear'"):
    average_adapter(spliced, params, 'ab', ['a', 'b'])


def test_ia3_average_is_exact_and_linear_average_is_leaf_by_leaf(setup):
  _, _, spliced, params, ids, mask, _ = setup
  with_s2, p = add_adapter(spliced, params, 's2', get_method('ia3'), jax.random.key(7), ids, mask)
  p = _perturb(p, 's2', seed=7)
  averaged, p_avg = average_adapter(with_s2, p, 'savg', ['s', 's2'], weights=(1, 3))
  # (IA)3 is linear in its scales: the averaged scales compute the average of the outputs.
  np.testing.assert_allclose(averaged.apply(p_avg, ids, mask, active='savg'),
                             averaged.apply(p_avg, ids, mask, active=Average('s', 's2', weights=(1, 3))),
                             **TOL)
  # how='linear' averages the scales leaf by leaf: the same scales as 'exact' for (IA)3.
  _, p_slin = average_adapter(with_s2, p, 'slin', ['s', 's2'], weights=(0.25, 0.75), how='linear')
  s, s2, slin = (adapter_leaves(p_slin, n) for n in ('s', 's2', 'slin'))
  assert len(slin) == len(s) == 6  # key, value and FFN scales in two layers
  for path, value in slin.items():
    want = (0.25 * np.asarray(s[path.replace('/slin/', '/s/')], np.float64)
            + 0.75 * np.asarray(s2[path.replace('/slin/', '/s2/')], np.float64))
    np.testing.assert_allclose(np.asarray(value), want, rtol=1e-6, atol=1e-7)
  with_b2, p = add_adapter(spliced, params, 'b2', get_method('pfeiffer'), jax.random.key(8), ids, mask)
  p = _perturb(p, 'b2', seed=8)
  _, p_lin = average_adapter(with_b2, p, 'blin', ['b', 'b2'], weights=(0.25, 0.75), how='linear')
  b, b2, blin = (adapter_leaves(p_lin, n) for n in ('b', 'b2', 'blin'))
  assert len(blin) == len(b) == 8  # down/up kernel and bias at two sites
  for path, value in blin.items():
    want = (0.25 * np.asarray(b[path.replace('/blin/', '/b/')], np.float64)
            + 0.75 * np.asarray(b2[path.replace('/blin/', '/b2/')], np.float64))
    np.testing.assert_allclose(np.asarray(value), want, rtol=1e-6, atol=1e-7)
  with_c, p = add_adapter(spliced, params, 'c', get_method('compacter', n=2, size=4), jax.random.key(9),
                          ids, mask)
  with pytest.raises(ValueError, match='only lora, ia3 and bottleneck'):
    average_adapter(with_c, p, 'cavg', ['c'], how='linear')


def test_adapter_drop_equals_leave_out(setup):
  model, base, spliced, params, ids, mask, _ = setup
  dropped = spliced.apply(params, ids, mask, active='b', skip_layers=1)
  solo, p = add_adapter(model, base, 'b', get_method('pfeiffer', leave_out=(0,)), jax.random.key(0),
                        ids, mask)
  flat = traverse_util.flatten_dict(p, sep='/')
  for path, value in adapter_leaves(params, 'b').items():
    if path in flat:
      flat[path] = value
  reference = solo.apply(traverse_util.unflatten_dict(flat, sep='/'), ids, mask, active='b')
  np.testing.assert_allclose(dropped, reference, **TOL)
  assert not np.allclose(dropped, spliced.apply(params, ids, mask, active='b'))


@pytest.mark.parametrize('active, error, fix', [
    (Fuse('l1', 'l2'), CompositionError, "'l1' is a lora adapter. Combine lora adapters with "
     'Average\\(...\\) or Stack\\(...\\), or fuse bottleneck adapters trained for the tasks'),
    (Fuse('a', 'b'), CompositionError, 'add_fusion'),
    (Stack('a', PerExample('b')), CompositionError, 'outermost'),
    (Average(Stack('a', 'b')), CompositionError, 'adapter names'),
    (Stack('a', 'a'), CompositionError, 'remove the repeat'),
    (Average('a', 'b', weights=(1.0,)), CompositionError, 'one weight per adapter'),
    ('nope', KeyError, 'spliced adapters'),
    (Stack('a', None), CompositionError,
     '^None \\(the base model\\) is only a branch of PerExample or Parallel.$'),
    (Stack(), CompositionError, '^Stack needs at least one child.$'),
])
def test_invalid_combinations_name_the_fix(setup, active, error, fix):
  _, _, spliced, params, ids, mask, _ = setup
  with pytest.raises(error, match=fix):
    spliced.apply(params, ids, mask, active=active)


def test_per_example_needs_index(setup):
  _, _, spliced, params, ids, mask, _ = setup
  with pytest.raises(CompositionError, match='choice_index'):
    spliced.apply(params, ids, mask, active=PerExample('a', 'b'))
  with pytest.raises(CompositionError, match='only used with active=PerExample'):
    spliced.apply(params, ids, mask, active='a', adapter_index=jnp.zeros(4, jnp.int32))
  with pytest.raises(CompositionError, match='not a branch'):
    choice_index(PerExample('a'), ['b'])


def test_choice_index_takes_branch_indices_from_minus_one_to_the_last():
  """Indices given as ints: -1 (base) up to the last branch pass through; one beyond either end
  is refused with the valid range; the result is int32 [B]."""
  node = PerExample('a', 'l1', Stack('s', 'b'))
  index = choice_index(node, [0, -1, 2, np.int64(1), 'l1', None])
  assert index.dtype == np.int32
  np.testing.assert_array_equal(index, [0, -1, 2, 1, 1, -1])
  for bad in (3, -2):
    with pytest.raises(CompositionError, match=f'Row 1: branch index {bad} is out of range; valid: -1 '
                                               '\\(base\\) to 2'):
      choice_index(node, [0, bad])
  # A bool is not an index: True is read as a composition and refused.
  with pytest.raises(CompositionError, match='active=True is not a composition'):
    choice_index(node, [True])


def test_nested_tuples_inside_compositions_become_stacks():
  assert Stack('a', ('l1', 's')).children == ('a', Stack('l1', 's'))
  assert Parallel(('a', 'b'), None).children == (Stack('a', 'b'), None)
  assert PerExample('a', ['l1', ('s', 'b')]).children == ('a', Stack('l1', Stack('s', 'b')))
  assert Average('a', 'b').children == ('a', 'b')
