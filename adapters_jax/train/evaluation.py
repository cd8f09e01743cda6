"""Evaluation of a split: the task kind's jitted outputs per batch, gathered, then its metrics.

Every example of the split is evaluated exactly once (the last batch is padded; padding rows carry
`example_mask` 0 and are dropped before the metrics). With several hosts each feeds its own rows and
the outputs are all-gathered.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from adapters_jax import data
from adapters_jax.splicing import trainable
from adapters_jax.splicing.tree import Params
from adapters_jax.task_kinds.protocol import EXAMPLE_MASK, TaskKind
from adapters_jax.train import placement


def make_eval_step(task_kind: TaskKind, forward) -> Callable:
  """`eval_step(trainable params, frozen params, batch) -> outputs` (jitted), padding mask kept."""

  @jax.jit
  def eval_step(train_params: Params, frozen: Params, batch: dict[str, jax.Array]):
    params = trainable.combine(train_params, frozen)
    outputs = task_kind.eval_outputs(forward, params, batch)
    return {**outputs, EXAMPLE_MASK: batch[EXAMPLE_MASK]}

  return eval_step


def evaluate(task_kind: TaskKind, eval_step: Callable, train_params: Params, frozen: Params,
             dataset: data.BatchSource, batch_size: int, mesh,
             on_batch: Callable[[int], None] = lambda n: None) -> dict[str, float]:
  """The task kind's metrics of the model on one encoded split.

  Args:
    on_batch: called with the number of (this host's) examples after each batch, for progress.
  """
  gathered = []
  for batch in data.eval_batches(dataset, batch_size, process_index=jax.process_index(),
                                 process_count=jax.process_count()):
    outputs = eval_step(train_params, frozen, placement.shard_batch(batch, mesh))
    gathered.append(placement.gather(outputs))
    on_batch(int(np.sum(batch[EXAMPLE_MASK])) * jax.process_count())
  merged = {k: np.concatenate([np.asarray(g[k]) for g in gathered]) for k in gathered[0]}
  keep = merged.pop(EXAMPLE_MASK).astype(bool)
  return task_kind.metrics({k: v[keep] for k, v in merged.items()})


def make_member_eval_step(task_kind: TaskKind, forward) -> Callable:
  """`eval_step(stacked trainable params [M, ...], frozen params, batch) -> outputs [M, B, ...]`
  (jitted): every member's outputs of one batch in one vmapped pass."""
  return jax.jit(jax.vmap(make_eval_step(task_kind, forward), in_axes=(0, None, None)))


def evaluate_members(task_kind: TaskKind, eval_step: Callable, stacked_params: Params,
                     frozen: Params, dataset: data.BatchSource, batch_size: int,
                     on_batch: Callable[[int], None] = lambda n: None) -> list[dict[str, float]]:
  """The task kind's metrics of every member on one split (single process).

  Args:
    eval_step: `make_member_eval_step`'s step.
    stacked_params: the members' trainable leaves, each with a leading member axis [M, ...].
    on_batch: called with the number of examples (times members) after each batch.

  Returns:
    M metric dicts, in member order.
  """
  members = jax.tree.leaves(stacked_params)[0].shape[0]
  gathered = []
  for batch in data.eval_batches(dataset, batch_size):
    gathered.append(jax.device_get(eval_step(stacked_params, frozen, batch)))
    on_batch(int(np.sum(batch[EXAMPLE_MASK])) * members)
  merged = {k: np.concatenate([g[k] for g in gathered], axis=1) for k in gathered[0]}  # [M, N, ...]
  keep = merged.pop(EXAMPLE_MASK)[0].astype(bool)  # the same rows for every member
  return [task_kind.metrics({k: v[m][keep] for k, v in merged.items()}) for m in range(members)]
