"""The `nn.scan` layout helper: stacking puts layer i at index i of every leaf, leaves a stack's
other entries alone, names missing blocks, and unstacking gives the plain tree back."""

import numpy as np
import pytest
from flax import traverse_util

from adapters_jax.models.scan_layout import is_scanned, stack_layers, unstack_layers


def _plain():
  layer = lambda i: {'attention': {'kernel': np.full((2, 3), float(i))},
                     'norm': {'scale': np.arange(3.0) + i}}
  return {
      'shared': {'embedding': np.ones((5, 3))},
      'encoder': {'layer_0': layer(0), 'layer_1': layer(1), 'final_norm': {'scale': np.ones(3)}},
      'decoder': {'layer_0': layer(10)},
  }


def test_stacking_puts_layer_i_at_index_i_and_keeps_the_other_entries():
  plain = _plain()
  scanned = stack_layers(plain, {'encoder': 2, 'decoder': 1})
  assert is_scanned(scanned) and not is_scanned(plain)
  assert sorted(scanned['encoder']) == ['final_norm', 'layers']
  kernel = scanned['encoder']['layers']['attention']['kernel']
  np.testing.assert_array_equal(kernel, np.stack([np.zeros((2, 3)), np.ones((2, 3))]))
  np.testing.assert_array_equal(scanned['decoder']['layers']['norm']['scale'], [[10.0, 11.0, 12.0]])
  assert scanned['shared'] is plain['shared'] and 'layer_0' in plain['encoder']  # input unchanged


def test_unstacking_inverts_stacking():
  plain = _plain()
  back = unstack_layers(stack_layers(plain, {'encoder': 2, 'decoder': 1}))
  want, got = (traverse_util.flatten_dict(t, sep='/') for t in (plain, back))
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_a_missing_block_is_named():
  with pytest.raises(ValueError, match=r"encoder has no blocks \['layer_2'\]"):
    stack_layers(_plain(), {'encoder': 3})
