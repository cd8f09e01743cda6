"""The `nn.scan` layout of a backbone's layers: per-layer subtrees <-> one stacked subtree.

A plain tree holds a stack's blocks as `<stack>/layer_{i}/...`; with `scan_layers=True` the model
holds them as one `<stack>/layers/...` whose leaves carry a leading `[num_layers]` axis. The stacks
are `encoder` (BERT/RoBERTa), `decoder` (GPT-2, Llama family) or both (T5); the stack's other
entries (T5's final norm, ...) stay as they are.

    scanned = stack_layers(params, {'encoder': config.num_layers})
    assert is_scanned(scanned) and tree_equal(unstack_layers(scanned), params)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

STACKED = 'layers'


def _layer_name(i: int) -> str:
  return f'layer_{i}'


def stack_layers(params: Mapping[str, Any], depths: Mapping[str, int]) -> dict[str, Any]:
  """`<stack>/layer_{i}/...` -> `<stack>/layers/...` ([num_layers, ...] leaves), for each stack.

  Args:
    params: a plain param tree.
    depths: `{stack name: number of layers}`, e.g. `{'encoder': 12, 'decoder': 12}` for T5.

  Returns:
    A new tree in the `scan_layers=True` layout (`params` is not changed).

  Raises:
    ValueError: a stack lacks some of its `layer_{i}` blocks (they are named).
  """
  out = dict(params)
  for stack, depth in depths.items():
    tree = dict(params[stack])
    names = [_layer_name(i) for i in range(depth)]
    missing = [n for n in names if n not in tree]
    if missing:
      raise ValueError(f'{stack} has no blocks {missing}; its entries: {sorted(tree)}.')
    blocks = [tree.pop(n) for n in names]
    tree[STACKED] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *blocks)
    out[stack] = tree
  return out


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
  """Inverse of `stack_layers`: every `<stack>/layers/...` back to `<stack>/layer_{i}/...`."""
  out = dict(params)
  for stack, tree in params.items():
    if not (isinstance(tree, Mapping) and STACKED in tree):
      continue
    tree = dict(tree)
    stacked = tree.pop(STACKED)
    depth = jax.tree_util.tree_leaves(stacked)[0].shape[0]
    for i in range(depth):
      tree[_layer_name(i)] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
    out[stack] = tree
  return out


def is_scanned(params: Mapping[str, Any]) -> bool:
  """Whether some stack of `params` is in the `scan_layers=True` layout."""
  return any(isinstance(tree, Mapping) and STACKED in tree for tree in params.values())
