"""The training loop: `train_and_evaluate(config, workdir)`, for every method and task kind.

Trains the configured adapter (a fusion, or a baseline) on the configured task, evaluates on
validation every `eval_every_steps` and at the end, keeps the best-on-validation trained leaves in
`workdir/best`, checkpoints the trainable state every `checkpoint_every_steps` (resuming from the
latest readable one when rerun on the same workdir), and writes `metrics.jsonl`, TensorBoard events
and, last, `result.json`. The loss, evaluation outputs and metrics come from the experiment's task
kind (`task_kinds`), and an experiment's regulariser (AdapterFusion's) is part of its training loss.

It is the run engine (`train.engine`) with one member, sharded over the config's mesh; a vmapped
group (`train.vmapped.train_group`) is the same engine with several. See `train.engine` for the
determinism and workdir guarantees.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from adapters_jax.train.engine import train_runs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains, evaluates and writes everything to `workdir`. Returns the result record.

  Raises:
    engine.NonFiniteLossError: the training loss became non-finite (the last good checkpoint is
      kept).
  """
  return train_runs([config], [workdir], vmapped=False)[0]
