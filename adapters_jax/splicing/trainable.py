"""What trains: masks from ordered regex rules, the trainable/frozen split, counts.

Parameters are named by their `/`-joined paths (`encoder/layer_0/attention/output/adapters/a/up/kernel`).
A rule list is an ordered sequence of `(whole-name regex, trainable)` pairs; the first rule that fully
matches a leaf's path decides it, and a leaf that no rule covers is an error (end the list with
`('.*', False)` to freeze the rest on purpose).

The train step differentiates only the trainable partition (`split`), so frozen leaves get no
gradients and no optimizer state; `combine` rebuilds the full tree for the forward pass. (Code that
keeps one full tree instead uses `optax.partition` with labels from the mask.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from adapters_jax.splicing.sites import HEAD_PARAMS
from adapters_jax.splicing.tree import Params, adapter_pattern

Rules = Sequence[tuple[str, bool]]


def leaf_paths(tree: Params) -> list[str]:
  """The `/`-joined path of every leaf, in dict insertion order (`flatten_dict`).

  Not `jax.tree.leaves` order (which sorts dict keys): pair paths with values through
  `traverse_util.flatten_dict(tree, sep='/')`, not by zipping with `jax.tree.leaves`.
  """
  return list(traverse_util.flatten_dict(tree, sep='/'))


def make_mask(params: Params, rules: Rules) -> Params:
  """A tree of bools (True = trainable) with the structure of `params`.

  Args:
    params: nested dict of arrays.
    rules: ordered `(regex, trainable)` pairs; first full match wins.

  Raises:
    ValueError: some leaves match no rule (all of them are listed).
  """
  compiled = [(re.compile(pattern), bool(train)) for pattern, train in rules]
  flat = traverse_util.flatten_dict(params, sep='/')
  mask, uncovered = {}, []
  for path in flat:
    decision = next((train for pattern, train in compiled if pattern.fullmatch(path)), None)
    if decision is None:
      uncovered.append(path)
    mask[path] = decision
  if uncovered:
    shown = '\n  '.join(uncovered[:20]) + ('\n  ...' if len(uncovered) > 20 else '')
    raise ValueError(f'{len(uncovered)} parameter(s) match no trainable rule (add a rule, e.g. '
                     f"('.*', False) to freeze the rest):\n  {shown}")
  return traverse_util.unflatten_dict(mask, sep='/')


def adapter_rules(adapters: Iterable[Any], train_head: bool = True,
                  extra: Rules = ()) -> list[tuple[str, bool]]:
  """Rules that train the given adapters and what their methods also train; freeze the rest (and
  the leaves of an adapter its method keeps frozen: `MethodConfig.frozen_leaves`).

  Args:
    adapters: `tree.AdapterSpec`s (e.g. `[spliced.adapter('sst2')]`).
    train_head: also train the task head (`classifier/...`).
    extra: rules placed first (they win over the defaults).
  """
  rules = list(extra)
  for spec in adapters:
    rules.extend((adapter_pattern(spec.name, leaf), False) for leaf in spec.method.frozen_leaves)
    rules.append((adapter_pattern(spec.name), True))
    rules.extend((pattern, True) for pattern in spec.method.train_also)
  if train_head:
    rules.append((HEAD_PARAMS, True))
  rules.append((r'.*', False))
  return rules


def split(params: Params, mask: Params) -> tuple[Params, Params]:
  """Splits `params` into (trainable, frozen) nested dicts, each holding only its own leaves."""
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  if flat.keys() != flat_mask.keys():
    missing = sorted(flat.keys() - flat_mask.keys())[:5]
    extra = sorted(flat_mask.keys() - flat.keys())[:5]
    raise ValueError(f'Mask and params differ: not in mask {missing}, not in params {extra}.')
  trainable = {p: v for p, v in flat.items() if flat_mask[p]}
  frozen = {p: v for p, v in flat.items() if not flat_mask[p]}
  return (traverse_util.unflatten_dict(trainable, sep='/'),
          traverse_util.unflatten_dict(frozen, sep='/'))


def combine(*parts: Params) -> Params:
  """Merges disjoint partial trees (e.g. trainable and frozen) back into one tree."""
  flat: dict[str, Any] = {}
  for part in parts:
    for path, value in traverse_util.flatten_dict(part, sep='/').items():
      if path in flat:
        raise ValueError(f'Leaf {path} is in more than one part.')
      flat[path] = value
  return traverse_util.unflatten_dict(flat, sep='/')


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  """Number of scalar parameters."""

  trainable: int
  total: int

  @property
  def percent(self) -> float:
    return 100.0 * self.trainable / max(self.total, 1)

  def __str__(self) -> str:
    return f'{self.trainable:,} trainable of {self.total:,} ({self.percent:.3f}%)'


def count_params(tree: Params) -> int:
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def count(params: Params, mask: Params) -> ParamCounts:
  """Trainable and total parameter counts."""
  trainable, _ = split(params, mask)
  return ParamCounts(trainable=count_params(trainable), total=count_params(params))


def tree_bytes(tree: Any) -> int:
  """Bytes held by the arrays of a pytree."""
  return int(sum(np.asarray(x).nbytes if not hasattr(x, 'nbytes') else x.nbytes
                 for x in jax.tree.leaves(tree)))

