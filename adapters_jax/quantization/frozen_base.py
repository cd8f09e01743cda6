"""A frozen base with its kernels quantised (QLoRA): which leaves, how, and the float view.

`quantize_frozen` replaces every frozen weight matrix (every projection, the LM head, the
embedding tables; not norms, biases, adapters or anything that trains) by a
`codec.QuantizedArray`. Which leaves those are, `select` says:

    'named'     leaves named `kernel` or `embedding` (Flax Linen's names of a Dense projection's
                and an Embed table's weights; a scanned stack's norm scales [layers, d] stay float);
    'matrices'  every leaf of >= 2 dims but those named `bias` or `scale`: an NNX model's weights
                have no common name (tunix's Einsum `w`, its Embedder's `input_embedding`), and
                `nnx.LinearGeneral`'s bias is [heads, head_dim].

`dequantize_tree` turns them back into float kernels and is what a run calls inside its jitted
step, before `Spliced.apply` (or an NNX model's `Functional.apply`), so the stored base stays 4 or
8 bits per value between steps and the float kernels exist only as XLA temporaries. With
`keep_tables=True` the embedding tables stay quantised: our Linen backbones' embedding modules look
up the rows they need and dequantise only those (`quantization.embedding`), so no whole dequantised
table is a temporary (a tied output head still dequantises its table whole, as an untied head's
kernel is; NNX models dequantise every table whole). The frozen tree is an argument of the step and
never differentiated, so nothing quantised is ever updated.

    params = quantize_frozen(params, mask, 'nf4', block_size=64)
    logits = spliced.apply(dequantize_tree(params, keep_tables=True), input_ids, active='task')
    params = quantize_frozen(functional.params, mask, 'nf4', 64, select='matrices')  # NNX


Counts read `logical(params)`: each quantised leaf as a `jax.ShapeDtypeStruct` of the kernel it
stands for. An adapter trained over a quantised base records the float base's fingerprints, so it
restores onto the float base (`checkpoint.restore_adapter`), which `quantize_frozen` then stores
quantised: the order a run's prediction follows (`train.experiment.quantize_base`).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

from adapters_jax.quantization.codec import QuantizedArray, check_scheme, dequantize, quantize
from adapters_jax.quantization.embedding import TABLE_NAME

Params = Any
QUANTIZED_NAMES = ('kernel', TABLE_NAME)  # select='named'
FLOAT_NAMES = ('bias', 'scale')  # select='matrices': every other leaf of >= 2 dims
SELECTIONS = ('named', 'matrices')


def is_quantized(leaf: Any) -> bool:
  return isinstance(leaf, QuantizedArray)


def quantizable(path: str, leaf: Any, select: str = 'named') -> bool:
  """Whether a frozen leaf at `path` (`/`-joined) is stored quantised: a weight matrix of >= 2
  dims outside any adapter subtree, by `select`'s names (see the module docstring)."""
  parts = path.split('/')
  if 'adapters' in parts or len(np.shape(leaf)) < 2:
    return False
  if select == 'named':
    return parts[-1] in QUANTIZED_NAMES
  return parts[-1] not in FLOAT_NAMES


def check_selection(select: str) -> None:
  if select not in SELECTIONS:
    raise ValueError(f'Unknown leaf selection {select!r}; valid: {list(SELECTIONS)}.')


def quantize_frozen(params: Params, mask: Params, kind: str, block_size: int,
                    select: str = 'named') -> Params:
  """`params` with every frozen (`mask` False) quantisable weight stored as `kind` blocks.

  Works on arrays and on `jax.ShapeDtypeStruct`s (through `jax.eval_shape`: the abstract
  quantised leaves of a model too large to materialise).

  Args:
    select: which leaves are weights, `'named'` (Linen's names) or `'matrices'` (an NNX model's
      leaves of >= 2 dims but biases and norm scales); see the module docstring.
  """
  check_scheme(kind, block_size)
  check_selection(select)
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  out = {}
  for path, leaf in flat.items():
    if flat_mask[path] or not quantizable(path, leaf, select):
      out[path] = leaf
    elif isinstance(leaf, jax.ShapeDtypeStruct):
      out[path] = jax.eval_shape(lambda x: quantize(x, kind, block_size), leaf)
    else:
      out[path] = jax.jit(quantize, static_argnums=(1, 2))(leaf, kind, block_size)
  return traverse_util.unflatten_dict(out, sep='/')


def dequantize_tree(params: Params, keep_tables: bool = False, shardings: Params | None = None) -> Params:
  """`params` with every `QuantizedArray` leaf as its float kernel (other leaves as they are).

  Args:
    params: a (partly) quantised param tree.
    keep_tables: leave the quantised `embedding` tables as they are, for a model whose embedding
      modules read them (`quantization.embedding`: our BERT/RoBERTa, T5 and decoder backbones).
    shardings: the stored tree's shardings (e.g. `jax.tree.map(lambda x: x.sharding, frozen)`;
      paths not in `params` are ignored): each dequantised kernel is constrained to its codes'
      sharding, so it stays split as the codes are. Without it XLA's partitioner may gather a
      kernel whole on every device (an untied LM head under FSDP: +1.7 GB a device on Llama-3-8B).
  """
  if not any(is_quantized(leaf) for leaf in jax.tree.leaves(params, is_leaf=is_quantized)):
    return params  # a float base (any pytree, e.g. an NNX model's state)
  flat = traverse_util.flatten_dict(params, sep='/')
  placed = {} if shardings is None else {
      path: leaf.codes for path, leaf in traverse_util.flatten_dict(shardings, sep='/').items()
      if is_quantized(leaf)}
  out = {}
  for path, leaf in flat.items():
    keep = keep_tables and path.rsplit('/', 1)[-1] == TABLE_NAME
    if not is_quantized(leaf) or keep:
      out[path] = leaf
    elif path in placed:
      out[path] = jax.lax.with_sharding_constraint(dequantize(leaf), placed[path])
    else:
      out[path] = dequantize(leaf)
  return traverse_util.unflatten_dict(out, sep='/')


def logical(params: Params) -> Params:
  """`params` with every `QuantizedArray` as a `jax.ShapeDtypeStruct` of the kernel it stores."""
  return jax.tree.map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) if is_quantized(leaf) else leaf,
      params, is_leaf=is_quantized)


def describe(kind: str, block_size: int, select: str = 'named') -> dict[str, Any]:
  """The quantisation as a checkpoint's record keeps it."""
  check_selection(select)
  if select == 'named':
    leaves = 'frozen ' + ', '.join(f'*/{name}' for name in QUANTIZED_NAMES) + ' (>= 2 dims)'
  else:
    leaves = 'frozen leaves of >= 2 dims but ' + ', '.join(f'*/{name}' for name in FLOAT_NAMES)
  return {'kind': kind, 'block_size': block_size, 'leaves': leaves}
