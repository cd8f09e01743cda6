"""Where every array of a run lives on a 2-D device mesh: sharding rules by parameter path.

The mesh has two axes, `data` x `model`. The batch is split over `data`; `model` is tensor
parallelism. A strategy (`config.sharding`) picks the rules of the params:

    data     every param replicated (data parallelism; the mesh is `[devices, 1]`)
    fsdp     the frozen base split over `data` on each leaf's largest divisible dim (ZeRO-3 style:
             the same axis carries the batch and the weights; XLA gathers a layer's weights when
             it runs it)
    tp       Megatron tensor parallelism over `model`: query/key/value, gate and intermediate
             (up) column-parallel, attention and FFN output row-parallel, embeddings over the vocab
    fsdp+tp  tp, plus each tensor-parallel matrix's other dim (and every other leaf's largest) over
             `data`

Adapter leaves (`.../adapters/NAME/...`: LoRA's A/B, bottlenecks) are small and replicated in
every strategy; optimizer moments follow the sharding of their param. The frozen base may be
stored in bfloat16 (`config.frozen_dtype`) while the trained leaves stay float32 master weights.
A quantised kernel or embedding table (`config.quantize`) is two leaves, `.../kernel/codes` and
`.../kernel/scales`, blocked along the matrix's last axis; each takes the matrix's rule (their
trailing dims are the matrix's, the last one shrunk).

Rules are ordered `(regex, spec)` pairs; the regex fully matches the `/`-joined param path, the
first match wins, and a path no rule matches is an error. A spec is a `PartitionSpec` naming the
*trailing* dims of a leaf (a scanned stack's leading `[layers]` axis stays whole), or `Largest`.
A dim that the named mesh axis does not divide is an error naming the leaf and the fix.

Example:
  mesh = make_mesh(jax.devices(), model_parallelism=2)     # [4 data, 2 model] on 8 devices
  rules = strategy_rules('fsdp+tp')
  frozen = jax.device_put(frozen, tree_shardings(frozen, rules, mesh))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
STRATEGIES = ('data', 'fsdp', 'tp', 'fsdp+tp')
FROZEN_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Largest:
  """Split the leaf's largest dim that `axis` divides (FSDP); replicate it when none does."""

  axis: str = DATA_AXIS


Spec = PartitionSpec | Largest
Rules = Sequence[tuple[str, Spec]]

# Adapters (grafted under a site as `adapters/NAME/...`) are small: a copy on every device.
ADAPTER_RULES: list[tuple[str, Spec]] = [(r'(.*/)?adapters/[^/]+/.*', PartitionSpec())]

_LAYER = r'(.*/)?(layer_\d+|layers)'
_ATTN = r'(cross_)?attention'
# Megatron: (regex, kernel spec [in, out], bias spec [out] or None = replicated).
_COLUMN = (None, MODEL_AXIS)
_ROW = (MODEL_AXIS, None)
_TENSOR_PARALLEL = [
    (rf'{_LAYER}/{_ATTN}/(query|key|value)', _COLUMN),
    (rf'{_LAYER}/{_ATTN}/output', _ROW),
    (rf'{_LAYER}/ffn/(gate|intermediate|intermediate_linear)', _COLUMN),
    (rf'{_LAYER}/ffn/output', _ROW),
    (r'lm_head', _COLUMN),
]
# Embedding tables [vocab, hidden] over the vocab.
_EMBEDDINGS = r'(embeddings/word_embeddings|shared)/embedding(/codes|/scales)?'


def strategy_rules(strategy: str) -> list[tuple[str, Spec]]:
  """The rules of a strategy in `STRATEGIES` (adapter rules first, a catch-all last)."""
  if strategy not in STRATEGIES:
    raise ValueError(f'Unknown sharding strategy {strategy!r}; valid: {list(STRATEGIES)}.')
  if strategy == 'data':
    return ADAPTER_RULES + [(r'.*', PartitionSpec())]
  if strategy == 'fsdp':
    return ADAPTER_RULES + [(r'.*', Largest(DATA_AXIS))]
  fsdp = strategy == 'fsdp+tp'
  other = DATA_AXIS if fsdp else None  # the dim tensor parallelism leaves whole
  rules = list(ADAPTER_RULES)
  for module, (fan_in, fan_out) in _TENSOR_PARALLEL:
    kernel = tuple(other if axis is None else axis for axis in (fan_in, fan_out))
    rules.append((rf'{module}/kernel(/codes|/scales)?', PartitionSpec(*kernel)))
    rules.append((rf'{module}/bias', PartitionSpec(fan_out)))
  rules.append((_EMBEDDINGS, PartitionSpec(MODEL_AXIS, other)))
  rules.append((r'.*', Largest(DATA_AXIS) if fsdp else PartitionSpec()))
  return rules


def make_mesh(devices: Sequence[jax.Device] | None = None, model_parallelism: int = 1) -> Mesh:
  """A `[data, model]` mesh over `devices` (default: all), `model_parallelism` devices per model
  group; `data` takes the rest."""
  devices = list(jax.devices() if devices is None else devices)
  if model_parallelism < 1 or len(devices) % model_parallelism:
    divisors = [d for d in range(1, len(devices) + 1) if len(devices) % d == 0]
    raise ValueError(f'model_parallelism={model_parallelism} must divide the {len(devices)} '
                     f'devices; choose one of {divisors}.')
  grid = np.asarray(devices).reshape(len(devices) // model_parallelism, model_parallelism)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def leaf_spec(path: str, shape: tuple[int, ...], rules: Rules, mesh: Mesh) -> PartitionSpec:
  """The full-rank PartitionSpec of one leaf: the first rule whose regex matches `path`.

  Raises:
    ValueError: no rule matches; or a named axis does not divide its dim (both name the leaf).
  """
  pattern, spec = next(((p, s) for p, s in rules if re.fullmatch(p, path)), (None, None))
  if pattern is None:
    raise ValueError(f'No sharding rule matches {path!r} {tuple(shape)}; add a rule for it (the '
                     f'rules are {[p for p, _ in rules]}).')
  if isinstance(spec, Largest):
    return _largest(shape, spec.axis, mesh)
  if len(spec) > len(shape):
    raise ValueError(f'Sharding rule {pattern!r} gives {spec} to {path!r}, which has only '
                     f'{len(shape)} dims {tuple(shape)}.')
  full = (None,) * (len(shape) - len(spec)) + tuple(spec)
  for dim, axis in zip(shape, full, strict=True):
    size = _axis_size(mesh, axis)
    if dim % size:
      raise ValueError(
          f'{path!r} {tuple(shape)}: dim {dim} is not divisible by mesh axis {axis!r} of size '
          f'{size} (rule {pattern!r}); choose a mesh shape (model_parallelism) whose axes divide '
          'it, or put a rule that replicates this leaf before that one.')
  return PartitionSpec(*full)


def _axis_size(mesh: Mesh, axis: Any) -> int:
  if axis is None:
    return 1
  names = axis if isinstance(axis, tuple) else (axis,)
  return int(np.prod([mesh.shape[name] for name in names]))


def _largest(shape: tuple[int, ...], axis: str, mesh: Mesh) -> PartitionSpec:
  """`axis` on the largest dim it divides (the last of equals), or replicated."""
  size = mesh.shape[axis]
  candidates = [(dim, i) for i, dim in enumerate(shape) if dim % size == 0 and dim >= size]
  if size == 1 or not candidates:
    return PartitionSpec()
  _, best = max(candidates)
  return PartitionSpec(*[axis if i == best else None for i in range(len(shape))])


def path_of(key_path) -> str:
  return jax.tree_util.keystr(key_path, simple=True, separator='/')


def tree_specs(tree: Any, rules: Rules, mesh: Mesh) -> Any:
  """A PartitionSpec per leaf of a param tree (arrays or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, leaf: leaf_spec(path_of(p), tuple(leaf.shape), rules, mesh), tree)


def tree_shardings(tree: Any, rules: Rules, mesh: Mesh) -> Any:
  """A NamedSharding per leaf of a param tree."""
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), tree_specs(tree, rules, mesh))


def state_shardings(state: Any, rules: Rules, mesh: Mesh) -> Any:
  """A NamedSharding per leaf of a `TrainState`: params by the rules, each optimizer moment as
  its param (a state leaf whose path ends with a param's path and has its shape), the rest
  (step, rng, counts) replicated."""
  params = {path_of(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
  specs = {path: leaf_spec(path, tuple(leaf.shape), rules, mesh) for path, leaf in params.items()}

  def one(key_path, leaf):
    path = path_of(key_path)
    owners = [p for p, param in params.items()
              if path.endswith('/' + p) and tuple(param.shape) == tuple(leaf.shape)]
    if not owners:
      return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, specs[max(owners, key=len)])

  return jax.tree_util.tree_map_with_path(one, state)


def cast_floating(tree: Any, dtype) -> Any:
  """Every floating leaf of `tree` as `dtype` (integers untouched); ShapeDtypeStructs too."""
  def cast(leaf):
    if not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == dtype:
      return leaf
    if isinstance(leaf, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
    return leaf.astype(dtype)
  return jax.tree.map(cast, tree)


def abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or structs) carrying `shardings`: inputs for
  `jit(...).lower` without materialising anything."""
  return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
                      tree, shardings)
