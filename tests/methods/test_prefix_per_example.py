"""Prefix adapters under PerExample and Parallel: each row of a batch runs its own prefix (a gated
one, a flat one of another length, a stack of two, UniPELT's union, or none) and equals that row run
alone with its adapter active, on BERT and on a tiny Llama decoder (exact up to float rounding:
shorter branches are padded with masked keys, which get no attention weight)."""

import jax
import numpy as np
import pytest

from adapters_jax import add_adapter, get_method
from adapters_jax.models import DecoderLM, classification_model
from adapters_jax.splicing.composition import Parallel, PerExample, Stack, choice_index
from tests.methods.splice_checks import BERT, perturb
from tests.models.tiny_decoders import TINY_DECODERS

ADAPTERS = {  # name -> method: two prefix lengths, gated and not, reparameterised and flat
    'gated': get_method('prefix_tuning', prefix_length=3, bottleneck_size=16, use_gating=True),
    'flat': get_method('prefix_tuning_flat', prefix_length=5),
}


def _host(family):
  """(model, base params, (ids, mask) [4, 7] with padded rows)."""
  ids = np.asarray(jax.random.randint(jax.random.key(0), (4, 7), 1, 60), np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  mask[3, 4:] = 0
  model = (classification_model(BERT, num_labels=3) if family == 'bert'
           else DecoderLM(TINY_DECODERS[family]))
  params = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  if family == 'bert':  # a head of unit scale, so logits move visibly with the encoder
    params['classifier']['dense']['kernel'] = jax.random.normal(jax.random.key(9), (32, 3))
  return model, params, (ids, mask)


def _spliced(family, names):
  model, params, inputs = _host(family)
  spliced = model
  for i, name in enumerate(names):
    method = get_method('unipelt') if name == 'unipelt' else ADAPTERS[name]
    spliced, params = add_adapter(spliced, params, name, method, jax.random.key(i + 1), *inputs)
    params = perturb(params, name, scale=0.5, seed=i)  # gates away from 1/2, LoRA B non-zero
  return spliced, params, inputs


def _alone(spliced, params, inputs, active, row):
  ids, mask = inputs
  return np.asarray(jax.jit(lambda p: spliced.apply(p, ids[row:row + 1], mask[row:row + 1],
                                                    active=active))(params))[0]


@pytest.mark.parametrize('family', ['bert', 'llama'])
def test_each_row_equals_its_prefix_adapter_run_alone(family):
  names = ('gated', 'flat') + (('unipelt',) if family == 'bert' else ())
  spliced, params, inputs = _spliced(family, names)
  node = PerExample('gated', Stack('gated', 'flat'), 'flat', None)
  if family == 'bert':
    node = PerExample('gated', 'unipelt', 'flat', None)
  choices = list(node.children)
  index = choice_index(node, choices)  # row i runs branch i
  mixed = np.asarray(jax.jit(lambda p: spliced.apply(p, *inputs, active=node,
                                                     adapter_index=index))(params))
  for row, branch in enumerate(choices):
    alone = _alone(spliced, params, inputs, branch, row)
    np.testing.assert_allclose(mixed[row], alone, rtol=1e-5, atol=1e-5, err_msg=f'row {row}')
  for row in range(len(choices) - 1):  # every adapter row differs from its base model
    assert np.abs(mixed[row] - _alone(spliced, params, inputs, None, row)).max() > 1e-2


def test_parallel_runs_each_prefix_adapter_on_the_whole_batch():
  spliced, params, inputs = _spliced('bert', ('gated', 'flat'))
  out = np.asarray(jax.jit(lambda p: spliced.apply(p, *inputs, active=Parallel('gated', 'flat')))(
      params))  # [2, batch, labels]
  for k, name in enumerate(('gated', 'flat')):
    alone = np.asarray(jax.jit(lambda p, name=name: spliced.apply(p, *inputs, active=name))(params))
    np.testing.assert_allclose(out[k], alone, rtol=1e-5, atol=1e-5)
