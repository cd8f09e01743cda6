"""Quickstart: Houlsby adapters on the packaged MiniLM-L6 and the packaged Rotten Tomatoes task.

Command (what `make demo` runs):
  python -m experiments.train --config=experiments/configs/quickstart.py --workdir=workdirs/quickstart

Hardware: CPU, 2 cores. Run time: about 3.7 minutes on 2 idle cores (6.1 min of CPU time).
Expected (measured 2026-11-29): validation accuracy 0.807, test accuracy 0.814 (10,313 training
snippets, 1 epoch = 322 steps of 32, max length 64), 2.6% of the parameters trained (605,954).

`:smoke` shrinks everything for tests (a few steps on a few hundred examples); `key=value` items
set any field (`:smoke,seed=1`).
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config

CONFIG_ARGS = ('', 'smoke', 'smoke,seed=1')


def get_config(arg: str = ''):
  """The schema's run (minilm-l6, rotten_tomatoes, houlsby, lr 1e-3, batch 32) for one epoch at
  length 64; `arg`: see `adapters_jax.config.arguments`."""
  config = run_config()
  config.max_length = 64
  config.num_epochs = 1.0
  config.eval_every_steps = 100
  config.checkpoint_every_steps = 100
  config.log_every_steps = 10
  return parse_config_arg(arg).apply(
      config, max_train_examples=256, max_eval_examples=64, max_length=64, batch_size=16,
      eval_batch_size=32, num_train_steps=6, eval_every_steps=3, checkpoint_every_steps=3)
