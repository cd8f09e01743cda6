"""Composing named adapters at apply time: which adapters run, and how, without editing the tree.

`Spliced.apply(params, ..., active=...)` takes a composition:

    'a'                       one adapter
    ('a', 'b') / Stack(...)   adapters one after another at each site (input adapters first, then
                              the output and parallel ones, in order)
    Average('a', 'b', weights=(.7, .3))
                              a weighted average (weights normalised to sum 1) of the adapted site:
                              output placement y <- sum_i w_i a_i(y), parallel y <- y + sum_i w_i a_i(x)
    Fuse('a', 'b')            AdapterFusion over bottleneck adapters (needs a fusion layer spliced
                              by `adapters_jax.splicing.fusion_layers.add_fusion`); a fusion's name works too
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
At an attention's keys and values (prefix tuning) each branch's keys, values and mask are padded in
front to the longest branch (zero keys and values, masked out: they get no attention weight) and
picked per row the same way; a base row keeps its own keys behind masked padding, so every row
still equals its branch run alone (AdapterHub's BatchSplit pads prefixes of different lengths alike).

Parallel repeats the batch n times along its leading axis and runs it as PerExample with each copy
on its own branch. One trace, one compile and bigger matmuls, at n times the activation memory;
the alternative, calling the host once per branch inside one jit, has the same FLOPs but an n-times
larger program and smaller matmuls. Nothing below the first adapter site is shared (XLA shapes are
static, so the batch cannot grow mid-model); with AdapterDrop that is where the savings would be.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from adapters_jax.splicing.tree import AdapterSpec, find_spec


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
  make a new adapter with `adapters_jax.splicing.averaging.average_adapter`.
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


@dataclasses.dataclass(frozen=True, init=False)
class Parallel:
  """Every branch on the whole batch in one forward pass; outputs stacked on a new leading axis."""

  children: tuple

  def __init__(self, *children):
    object.__setattr__(self, 'children', _children(children))


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
                         'adapters_jax.splicing.composition.')


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


def _refuse_lengthening(node, adapters: Sequence[AdapterSpec]) -> None:
  """Rows or branches combined elementwise need equal lengths: a method that lengthens the sequence
  (prompt tuning) runs alone or in a Stack only."""
  long = [n for n in adapter_names(node) if find_spec(adapters, n).method.lengthens_sequence]
  if long:
    raise CompositionError(f'{long} lengthen the sequence, so {type(node).__name__} cannot combine '
                           'them with other branches; run them alone or in a Stack.')


def validate(node, adapters: Sequence[AdapterSpec], top: bool = True) -> Any:
  """Checks a (normalised) composition against the spliced adapters; returns it with fusion names
  resolved to `Fuse` blocks.

  Args:
    node: a composition (see `normalize`).
    adapters: the spliced adapters' specs (`Spliced.adapters`).
    top: whether `node` is the outermost block.

  Raises:
    KeyError: an unknown adapter name (the message lists the spliced ones).
    CompositionError: a combination that cannot run (the message names the fix).
  """
  if node is None:
    if top:
      return None
    raise CompositionError('None (the base model) is only a branch of PerExample or Parallel.')
  if not isinstance(node, (str, Stack)):
    _refuse_lengthening(node, adapters)
  if isinstance(node, str):
    spec = find_spec(adapters, node)
    if spec.merged:
      raise ValueError(f'Adapter {node!r} is merged into the base weights: it already runs '
                       'as part of the base model; unmerge it to run it as an adapter.')
    if spec.method.is_fusion:
      return validate(Fuse(*spec.method.adapters, name=node), adapters, top)
    return node
  if isinstance(node, (PerExample, Parallel)):
    kind = type(node).__name__
    if not top:
      raise CompositionError(f'{kind} must be the outermost composition (it decides which rows '
                             f'run what); write {kind}(Stack(...), ...) instead of nesting it.')
    if not node.children:
      raise CompositionError(f'{kind} needs at least one branch.')
    return type(node)(*(None if c is None else validate(c, adapters, top=False)
                        for c in node.children))
  if isinstance(node, Stack):
    if not node.children:
      raise CompositionError('Stack needs at least one child.')
    children = [validate(c, adapters, top=False) for c in node.children]
    names = [n for c in children for n in adapter_names(c)]
    if len(set(names)) != len(names):
      raise CompositionError(f'Adapter names repeat in active={node}: an adapter runs at most '
                             'once per site; remove the repeat.')
    flat = []
    for c in children:
      flat.extend(c.children if isinstance(c, Stack) else (c,))
    return Stack(*flat)
  if isinstance(node, Average):
    _check_leaf_children(node, adapters, 'Average')
    _check_site_output(node, adapters, 'Average')
    if node.weights is not None and len(node.weights) != len(node.children):
      raise CompositionError(f'Average got {len(node.weights)} weights for {len(node.children)} '
                             'adapters; give one weight per adapter.')
    if abs(sum(node.weights or (1.0,))) < 1e-12:
      raise CompositionError(f'Average weights {node.weights} sum to 0 and cannot be normalised.')
    return node
  if isinstance(node, Fuse):
    _check_leaf_children(node, adapters, 'Fuse')
    _check_site_output(node, adapters, 'AdapterFusion (Fuse)')
    _check_fusable(node, adapters)
    name = find_fusion(adapters, node)
    return Fuse(*node.children, name=name)
  raise CompositionError(f'Unknown composition block {node!r}.')


def _check_leaf_children(node, adapters: Sequence[AdapterSpec], kind: str) -> None:
  if not node.children:
    raise CompositionError(f'{kind} needs at least one adapter.')
  for c in node.children:
    if not isinstance(c, str):
      raise CompositionError(f'{kind} takes adapter names, got {c!r}; to {kind.lower()} composed '
                             f'adapters, train one adapter for them, or put {kind} inside the '
                             'Stack instead of the Stack inside it.')
    spec = find_spec(adapters, c)
    if spec.method.is_fusion:
      raise CompositionError(f'{kind} cannot take the fusion {c!r}; stack it instead: '
                             f'Stack({c!r}, ...).')
    if spec.merged:
      raise ValueError(f'Adapter {c!r} is merged into the base weights; unmerge it first.')
  if len(set(node.children)) != len(node.children):
    raise CompositionError(f'Adapter names repeat in {node}; name each adapter once.')


def _check_site_output(node, adapters: Sequence[AdapterSpec], kind: str) -> None:
  """Adapters with no output at their sites to combine (prefix tuning) are refused by `kind`, with
  the reason."""
  for name in adapter_names(node):
    method = find_spec(adapters, name).method
    if method.no_site_output:
      raise CompositionError(f'{kind} cannot take {name!r}: {method.no_site_output}.')


def _check_fusable(node: Fuse, adapters: Sequence[AdapterSpec]) -> None:
  for c in node.children:
    method = find_spec(adapters, c).method
    if not method.fusable:
      raise CompositionError(
          f'AdapterFusion fuses bottleneck adapters (houlsby, pfeiffer, parallel); {c!r} is a '
          f'{method.kind} adapter. Combine {method.kind} adapters with Average(...) or Stack(...), '
          'or fuse bottleneck adapters trained for the tasks.')


def find_fusion(adapters: Sequence[AdapterSpec], node: Fuse) -> str:
  """The name of the spliced fusion layer over `node`'s adapters (the same set of adapters)."""
  fusions = [s for s in adapters if s.method.is_fusion]
  if node.name is not None:
    spec = find_spec(adapters, node.name)
    if not spec.method.is_fusion:
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
        f'adapters_jax.add_fusion(spliced, params, {list(node.children)}, rng) or restore a fusion '
        f'checkpoint. Spliced fusions: {have or "none"}.')
  if len(hits) > 1:
    raise CompositionError(f'Several fusion layers fuse {list(node.children)}: {hits}; pick one '
                           'with Fuse(..., name=...).')
  return hits[0]
