"""PerExample on NNX models: in float64, each row of a mixed batch equals that row of the whole
batch run through its own branch alone (a name, a Stack, or the base model), eagerly and under
`nnx.jit` with the index traced; the index is required and must fit the batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adapters_jax.methods import get_method
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.splicing.composition import CompositionError, PerExample, Stack, choice_index
from tests.nnx import hosts

CHOICE = PerExample('lora', 'houlsby', Stack('lora', 'houlsby'))
ROWS = ['houlsby', None, Stack('lora', 'houlsby'), 'lora', 'houlsby']  # None: the base model


@pytest.fixture(scope='module')
def model_and_ids():
  with jax.enable_x64(True):
    model = hosts.Encoder(nnx.Rngs(0), layers=1)
    ids = hosts.sample_ids(batch=len(ROWS))
    splice.add_adapter(model, 'lora', get_method('lora', sites=hosts.preset_sites('encoder', 'lora')),
                       jax.random.key(0), ids)
    splice.add_adapter(model, 'houlsby', get_method('houlsby', size=4, train_also=(),
                                                    sites=hosts.preset_sites('encoder', 'houlsby')),
                       jax.random.key(1), ids)
    hosts.randomize(model, AdapterParam, seed=5)
    nnx.update(model, jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), nnx.state(model)))
  return model, ids


def test_each_row_runs_its_own_branch_in_float64(model_and_ids):
  model, ids = model_and_ids
  with jax.enable_x64(True):
    index = choice_index(CHOICE, ROWS)
    alone = {}
    for choice in dict.fromkeys(ROWS):
      splice.set_active(model, choice)
      alone[choice] = np.asarray(model(ids))
    assert alone[None].dtype == np.float64
    want = np.stack([alone[choice][row] for row, choice in enumerate(ROWS)])
    assert len({alone[c].tobytes() for c in alone}) == len(alone)  # every branch differs
    splice.set_active(model, CHOICE)
    with splice.adapter_index(model, index):
      mixed = model(ids)
    np.testing.assert_allclose(mixed, want, rtol=1e-12, atol=1e-12)

    @nnx.jit
    def forward(model, ids, index):
      with splice.adapter_index(model, index):
        return model(ids)

    np.testing.assert_allclose(forward(model, ids, index), want, rtol=1e-12, atol=1e-12)
    flipped = index[::-1]  # another index: the same compilation, rows follow it
    np.testing.assert_allclose(forward(model, ids[::-1], flipped), want[::-1], rtol=1e-12,
                               atol=1e-12)


def test_the_index_is_required_and_must_fit_the_batch(model_and_ids):
  model, ids = model_and_ids
  with jax.enable_x64(True):
    splice.set_active(model, CHOICE)
    with pytest.raises(CompositionError, match='adapter_index'):
      model(ids)
    with pytest.raises(CompositionError, match='rows'), splice.adapter_index(model, [0, 1]):
      model(ids)
    splice.set_active(model, 'lora')
    with pytest.raises(CompositionError, match='needs a PerExample'), \
         splice.adapter_index(model, [0] * len(ROWS)):
      pass
    with pytest.raises(CompositionError, match='outermost'):
      splice.set_active(model, Stack('lora', PerExample('houlsby')))
