"""Composing named adapters at apply time: which adapters run, and how, without editing the tree.

`Spliced.apply(params, ..., active=...)` takes a composition:

    'a'                       one adapter
    ('a', 'b') / Stack(...)   adapters one after another at each site (input adapters first, then
                              the output and parallel ones, in order)
    Average('a', 'b', weights=(.7, .3))
                              a weighted average (weights normalised to sum 1) of the adapted site:
                              output placement y <- sum_i w_i a_i(y), parallel y <- y + sum_i w_i a_i(x)
    Fuse('a', 'b')            AdapterFusion over bottleneck adapters (needs a fusion layer spliced
                              by `adapters_jax.fusion.add_fusion`); a fusion's name works too
    PerExample('a', None, Stack('a', 'b'))
                              one branch per example: pass `adapter_index=` an int array [B]; row i
                              runs branch adapter_index[i]; -1 (or None as a branch) is the base model
    Parallel('a', 'b')        every branch on the whole batch in one pass: output [n_branches, B, ...]

Nesting: Stack, Average and Fuse nest inside Stack, PerExample and Parallel; Average and Fuse take
adapter names only; PerExample and Parallel are outermost. `skip_layers=k` (AdapterDrop, Rücklé et
al. 2021) runs no adapter in the first k transformer blocks (or in the given block indices).

How a site is computed (why per-example choice is exact and compiles once): every branch's adapters
run on all rows of the site's activation, then `jnp.where` on the row's branch index picks each
row's value. The host runs once, rows stay independent, so row i equals running example i alone;
the index is an ordinary traced array, so new choices of the same shape reuse the compiled program.
Its cost is the sum of the branches' adapter costs (adapters are small next to the host).

Parallel repeats the batch n times along its leading axis and runs it as PerExample with each copy
on its own branch. One trace, one compile and bigger matmuls, at n times the activation memory;
the alternative, calling the host once per branch inside one jit, has the same FLOPs but an n-times
larger program and smaller matmuls. Nothing below the first adapter site is shared (XLA shapes are
static, so the batch cannot grow mid-model); with AdapterDrop that is where the savings would be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp

if TYPE_CHECKING:
  from adapters_jax.splice import Spliced


class CompositionError(ValueError):
  """An `active=` composition that cannot run; the message says what to change."""


def _children(items) -> tuple:
  return tuple(normalize(c) if not isinstance(c, str) and c is not None else c for c in items)


@dataclasses.dataclass(frozen=True, init=False)
class Stack:
  """Adapters applied one after another at each site (what a tuple of names means)."""

  children: tuple

  def __init__(self, *children):
    object.__setattr__(self, 'children', _children(children))


@dataclasses.dataclass(frozen=True, init=False)
class Average:
  """Weighted average of adapters' adapted sites; `weights` (default equal) are normalised.

  For the average of *parameters* (LoRA: exact; (IA)3: exact; bottleneck: linear interpolation),
  make a new adapter with `adapters_jax.fusion.average_adapter`.
  """

  children: tuple
  weights: tuple[float, ...] | None

  def __init__(self, *children, weights: Sequence[float] | None = None):
    object.__setattr__(self, 'children', _children(children))
    object.__setattr__(self, 'weights', None if weights is None else tuple(float(w) for w in weights))

  def normalized_weights(self) -> tuple[float, ...]:
    weights = self.weights or (1.0,) * len(self.children)
    total = sum(weights)
    return tuple(w / total for w in weights)


@dataclasses.dataclass(frozen=True, init=False)
class Fuse:
  """AdapterFusion over named bottleneck adapters; `name` picks the fusion layer if several fit."""

  children: tuple
  name: str | None

  def __init__(self, *children, name: str | None = None):
    object.__setattr__(self, 'children', _children(children))
    object.__setattr__(self, 'name', name)


@dataclasses.dataclass(frozen=True, init=False)
class PerExample:
  """One branch per example (adapter-hub BatchSplit, peft `adapter_names`); None = base model.

  Apply with `adapter_index=` an int array [B] (see `choice_index`); -1 means the base model.
  """

  children: tuple

  def __init__(self, *children):
    object.__setattr__(self, 'children', _children(children))

  def index_of(self, choices: Sequence[Any]) -> Any:
    """`choice_index(self, choices)`."""
    return choice_index(self, choices)


@dataclasses.dataclass(frozen=True, init=False)
class Parallel:
  """Every branch on the whole batch in one forward pass; outputs stacked on a new leading axis."""

  children: tuple

  def __init__(self, *children):
    object.__setattr__(self, 'children', _children(children))


BatchSplit = PerExample
Composition = str | Stack | Average | Fuse | PerExample | Parallel
_BLOCKS = (Stack, Average, Fuse, PerExample, Parallel)


def normalize(active) -> Composition | None:
  """None, a name, a composition, or a sequence of those (= Stack); nested tuples become Stacks."""
  if active is None or isinstance(active, str):
    return active
  if isinstance(active, _BLOCKS):
    return active
  if isinstance(active, (tuple, list)):
    return Stack(*active)
  raise CompositionError(f'active={active!r} is not a composition; use an adapter name, a tuple of '
                         'names, or Stack/Average/Fuse/PerExample/Parallel from '
                         'adapters_jax.composition.')


def adapter_names(node) -> tuple[str, ...]:
  """Every adapter name a composition mentions, in order, without repeats."""
  names: list[str] = []

  def walk(n):
    if isinstance(n, str):
      if n not in names:
        names.append(n)
    elif n is not None:
      for c in n.children:
        walk(c)
  walk(node)
  return tuple(names)


def choice_index(node: PerExample, choices: Sequence[Any]) -> Any:
  """Maps per-row branch choices (a branch, its index, or None = base) to the int array [B].

  Example:
    >>> choice_index(PerExample('a', 'b'), ['b', None, 'a'])
    array([ 1, -1,  0], dtype=int32)
  """
  import numpy as np

  index = []
  for row, choice in enumerate(choices):
    if choice is None:
      index.append(node.children.index(None) if None in node.children else -1)
    elif isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
      if not -1 <= int(choice) < len(node.children):
        raise CompositionError(f'Row {row}: branch index {choice} is out of range; valid: -1 '
                               f'(base) to {len(node.children) - 1}.')
      index.append(int(choice))
    else:
      choice = normalize(choice)
      if choice not in node.children:
        raise CompositionError(f'Row {row}: {choice!r} is not a branch of this PerExample; '
                               f'branches: {list(node.children)} (None = base model).')
      index.append(node.children.index(choice))
  return np.asarray(index, np.int32)


# --------------------------------------------------------------------------------------------------
# Validation.


def validate(node, spliced: Spliced, top: bool = True) -> Any:
  """Checks a (normalised) composition against the spliced adapters; returns it with fusion names
  resolved to `Fuse` blocks.

  Raises:
    KeyError: an unknown adapter name (the message lists the spliced ones).
    CompositionError: a combination that cannot run (the message names the fix).
  """
  from adapters_jax.methods.fusion import FusionConfig

  if node is None:
    if top:
      return None
    raise CompositionError('None (the base model) is only a branch of PerExample or Parallel.')
  if isinstance(node, str):
    spec = spliced.adapter(node)
    if spec.merged:
      raise ValueError(f'Adapter {node!r} is merged into the base weights: it already runs '
                       'as part of the base model; unmerge it to run it as an adapter.')
    if isinstance(spec.method, FusionConfig):
      return validate(Fuse(*spec.method.adapters, name=node), spliced, top)
    return node
  if isinstance(node, (PerExample, Parallel)):
    kind = type(node).__name__
    if not top:
      raise CompositionError(f'{kind} must be the outermost composition (it decides which rows '
                             f'run what); write {kind}(Stack(...), ...) instead of nesting it.')
    if not node.children:
      raise CompositionError(f'{kind} needs at least one branch.')
    return type(node)(*(None if c is None else validate(c, spliced, top=False)
                        for c in node.children))
  if isinstance(node, Stack):
    if not node.children:
      raise CompositionError('Stack needs at least one child.')
    children = [validate(c, spliced, top=False) for c in node.children]
    names = [n for c in children for n in adapter_names(c)]
    if len(set(names)) != len(names):
      raise CompositionError(f'Adapter names repeat in active={node}: an adapter runs at most '
                             'once per site; remove the repeat.')
    flat = []
    for c in children:
      flat.extend(c.children if isinstance(c, Stack) else (c,))
    return Stack(*flat)
  if isinstance(node, Average):
    _check_leaf_children(node, spliced, 'Average')
    if node.weights is not None and len(node.weights) != len(node.children):
      raise CompositionError(f'Average got {len(node.weights)} weights for {len(node.children)} '
                             'adapters; give one weight per adapter.')
    if abs(sum(node.weights or (1.0,))) < 1e-12:
      raise CompositionError(f'Average weights {node.weights} sum to 0 and cannot be normalised.')
    return node
  if isinstance(node, Fuse):
    _check_leaf_children(node, spliced, 'Fuse')
    _check_fusable(node, spliced)
    name = find_fusion(spliced, node)
    return Fuse(*node.children, name=name)
  raise CompositionError(f'Unknown composition block {node!r}.')


def _check_leaf_children(node, spliced, kind):
  from adapters_jax.methods.fusion import FusionConfig

  if not node.children:
    raise CompositionError(f'{kind} needs at least one adapter.')
  for c in node.children:
    if not isinstance(c, str):
      raise CompositionError(f'{kind} takes adapter names, got {c!r}; to {kind.lower()} composed '
                             f'adapters, train one adapter for them, or put {kind} inside the '
                             'Stack instead of the Stack inside it.')
    spec = spliced.adapter(c)
    if isinstance(spec.method, FusionConfig):
      raise CompositionError(f'{kind} cannot take the fusion {c!r}; stack it instead: '
                             f'Stack({c!r}, ...).')
    if spec.merged:
      raise ValueError(f'Adapter {c!r} is merged into the base weights; unmerge it first.')
  if len(set(node.children)) != len(node.children):
    raise CompositionError(f'Adapter names repeat in {node}; name each adapter once.')


def _check_fusable(node: Fuse, spliced: Spliced) -> None:
  from adapters_jax.methods.bottleneck import BottleneckConfig

  for c in node.children:
    method = spliced.adapter(c).method
    if not isinstance(method, BottleneckConfig):
      raise CompositionError(
          f'AdapterFusion fuses bottleneck adapters (houlsby, pfeiffer, parallel); {c!r} is a '
          f'{method.kind} adapter. Combine {method.kind} adapters with Average(...) or Stack(...), '
          'or fuse bottleneck adapters trained for the tasks.')


def find_fusion(spliced: Spliced, node: Fuse) -> str:
  """The name of the spliced fusion layer over `node`'s adapters (the same set of adapters)."""
  from adapters_jax.methods.fusion import FusionConfig

  fusions = [s for s in spliced.adapters if isinstance(s.method, FusionConfig)]
  if node.name is not None:
    spec = spliced.adapter(node.name)
    if not isinstance(spec.method, FusionConfig):
      raise CompositionError(f'{node.name!r} is not a fusion layer.')
    if tuple(spec.method.adapters) != tuple(node.children):
      raise CompositionError(f'Fusion {node.name!r} fuses {list(spec.method.adapters)}, not '
                             f'{list(node.children)}; name them in that order.')
    return node.name
  hits = [s.name for s in fusions if tuple(s.method.adapters) == tuple(node.children)]
  if not hits:
    have = {s.name: list(s.method.adapters) for s in fusions}
    raise CompositionError(
        f'No fusion layer fuses {list(node.children)} (in that order); splice one with '
        f'adapters_jax.fusion.add_fusion(spliced, params, {list(node.children)}, rng) or restore '
        f'a fusion checkpoint. Spliced fusions: {have or "none"}.')
  if len(hits) > 1:
    raise CompositionError(f'Several fusion layers fuse {list(node.children)}: {hits}; pick one '
                           'with Fuse(..., name=...).')
  return hits[0]


# --------------------------------------------------------------------------------------------------
# Per-site programs: what runs at one site, as input and output transforms.


class SiteOps:
  """What the interceptor offers a site program for one module call (see `splice`)."""

  index: Any  # [B] int32 branch index of each row (PerExample), or None

  def run(self, leaf, x):  # the leaf's module on x
    raise NotImplementedError

  def fuse(self, fusion, query, deltas):
    raise NotImplementedError


@dataclasses.dataclass
class Leaf:
  spec: Any
  site: Any
  module: Any
  delta_module: Any = None  # the bottleneck without its residual (for fusion)

  @property
  def has_input(self):
    return self.site.placement == 'input'

  def inp(self, ops, x):
    return ops.run(self, x, self.module) if self.has_input else x

  def out(self, ops, y, x):
    if self.site.placement == 'output':
      return ops.run(self, y, self.module)
    if self.site.placement == 'parallel':
      return y + ops.run(self, x, self.module)
    return y

  def delta(self, ops, y, x):
    return ops.run(self, y if self.site.placement == 'output' else x, self.delta_module)


@dataclasses.dataclass
class StackOp:
  ops: list

  @property
  def has_input(self):
    return any(op.has_input for op in self.ops)

  def inp(self, ops, x):
    for op in self.ops:
      x = op.inp(ops, x)
    return x

  def out(self, ops, y, x):
    for op in self.ops:
      y = op.out(ops, y, x)
    return y


@dataclasses.dataclass
class AverageOp:
  ops: list  # one per child, None where the child has no site here
  weights: tuple

  @property
  def has_input(self):
    return any(op is not None and op.has_input for op in self.ops)

  def inp(self, ops, x):
    if not self.has_input:
      return x
    return sum(w * (op.inp(ops, x) if op is not None else x)
               for w, op in zip(self.weights, self.ops, strict=True))

  def out(self, ops, y, x):
    return sum(w * (op.out(ops, y, x) if op is not None else y)
               for w, op in zip(self.weights, self.ops, strict=True))


@dataclasses.dataclass
class FuseOp:
  fusion: Leaf
  leaves: list  # the fused adapters present at this site

  has_input = False

  def inp(self, ops, x):
    return x

  def out(self, ops, y, x):
    if not self.leaves:
      return y
    deltas = jnp.stack([leaf.delta(ops, y, x) for leaf in self.leaves], axis=-2)  # [..., K, F]
    return ops.fuse(self.fusion, y, deltas)


@dataclasses.dataclass
class ChoiceOp:
  ops: list  # one per branch, None = unchanged (base, or no site of that branch here)

  @property
  def has_input(self):
    return any(op is not None and op.has_input for op in self.ops)

  def _select(self, ops, default, values):
    index = ops.index
    if index.shape[0] != default.shape[0]:
      raise CompositionError(
          f'adapter_index has {index.shape[0]} rows but a site sees a leading axis of '
          f'{default.shape[0]}; per-example choice needs the batch as the leading axis of every '
          'site activation.')
    out = default
    for k, value in enumerate(values):
      if value is not None:
        row = (index == k).reshape((-1,) + (1,) * (default.ndim - 1))
        out = jnp.where(row, value, out)
    return out

  def inp(self, ops, x):
    if not self.has_input:
      return x
    return self._select(ops, x, [op.inp(ops, x) if op is not None and op.has_input else None
                                 for op in self.ops])

  def out(self, ops, y, x):
    return self._select(ops, y, [op.out(ops, y, x) if op is not None else None for op in self.ops])


def _skip(site, dims, skip_layers) -> bool:
  if not skip_layers:
    return False
  if dims:
    raise CompositionError(f'skip_layers (AdapterDrop) needs unscanned layers; {site.path} is '
                           'under nn.scan. Load the model with scan_layers=False.')
  return site.layer is not None and site.layer in skip_layers


def compile_sites(node, spliced: Spliced, skip_layers: tuple[int, ...] = ()) -> dict[str, Any]:
  """`{site path: program}` for a validated composition (programs: Leaf/StackOp/...)."""
  paths: list[str] = []
  for name in adapter_names(node):
    for site in spliced.adapter(name).sites:
      if site.path not in paths:
        paths.append(site.path)
  if isinstance(node, Fuse):
    paths.extend(s.path for s in spliced.adapter(node.name).sites if s.path not in paths)
  table = {}
  for path in paths:
    op = _build(node, path, spliced, skip_layers)
    if op is not None:
      table[path] = op
  return table


def _leaf(name, path, spliced, skip_layers, delta=False):
  spec = spliced.adapter(name)
  for site, dims in zip(spec.sites, spec.stack_dims, strict=True):
    if site.path == path:
      if _skip(site, dims, skip_layers):
        return None
      module = spec.method.make_module(site)
      delta_module = module.clone(residual=False) if delta else None
      return Leaf(spec, site, module, delta_module)
  return None


def _build(node, path, spliced, skip_layers):
  if node is None:
    return None
  if isinstance(node, str):
    return _leaf(node, path, spliced, skip_layers)
  if isinstance(node, Stack):
    ops = [op for c in node.children if (op := _build(c, path, spliced, skip_layers)) is not None]
    return None if not ops else ops[0] if len(ops) == 1 else StackOp(ops)
  if isinstance(node, Average):
    ops = [_leaf(c, path, spliced, skip_layers) for c in node.children]
    return AverageOp(ops, node.normalized_weights()) if any(o is not None for o in ops) else None
  if isinstance(node, Fuse):
    fusion = _leaf(node.name, path, spliced, skip_layers)
    if fusion is None:
      return None
    leaves = [leaf for c in node.children
              if (leaf := _leaf(c, path, spliced, skip_layers, delta=True)) is not None]
    return FuseOp(fusion, leaves)
  if isinstance(node, (PerExample, Parallel)):
    ops = [_build(c, path, spliced, skip_layers) for c in node.children]
    return ChoiceOp(ops) if any(o is not None for o in ops) else None
  raise CompositionError(f'Unknown composition block {node!r}.')


def skip_layer_set(skip_layers) -> tuple[int, ...]:
  """`k` -> layers 0..k-1; a sequence -> those indices."""
  if skip_layers is None:
    return ()
  if isinstance(skip_layers, int):
    if skip_layers < 0:
      raise CompositionError(f'skip_layers must be >= 0, got {skip_layers}.')
    return tuple(range(skip_layers))
  return tuple(int(i) for i in skip_layers)
