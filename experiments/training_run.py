"""The body shared by the training entry points (`experiments.train`, its alias `experiments.fuse`).

Imports nothing heavy at module level: `run` first applies the host-memory setting (before JAX or
TensorFlow start threads), then trains and prints the result summary as JSON on stdout.
"""

import json
import sys

from absl import flags, logging

SUMMARY_KEYS = ('task', 'method', 'model', 'fused_adapters', 'trainable_params', 'trainable_percent',
                'best_step', 'validation_metrics', 'test_metrics', 'best_checkpoint',
                'attention_plot', 'train_examples_per_second')


def run(config, workdir: str) -> dict:
  """Trains (or resumes, or reports a finished run) and prints its summary. Returns the result."""
  from adapters_jax.host_memory import reuse_freed_host_memory

  reuse_freed_host_memory()  # first: before TensorFlow or JAX start their threads
  from adapters_jax.checkpoint import disk_full
  from adapters_jax.checkpoint.save import CheckpointError
  from adapters_jax.data.local_files import LocalFileError
  from adapters_jax.models.registry import HubDownloadError, ModelNotFoundError
  from adapters_jax.train.loop import train_and_evaluate  # after flags: keeps --help fast
  from adapters_jax.train.stop_signals import RunStoppedError
  from adapters_jax.train.workdir_lock import DirectoryBusyError

  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  disk_full.quiet_library_logs()  # a full disk is said once, in one line
  try:
    result = train_and_evaluate(config, workdir)
  except (CheckpointError, LocalFileError, ModelNotFoundError, HubDownloadError,
          DirectoryBusyError, disk_full.DiskFullError) as e:
    sys.exit(f'Cannot train {workdir}: {e}')  # the user's data or model: one line, no traceback
  except RunStoppedError as e:  # SIGTERM (preemption) or Ctrl-C: the step was saved
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  summary = {k: result[k] for k in SUMMARY_KEYS if k in result}
  summary['trainable_percent'] = round(summary['trainable_percent'], 3)
  summary['train_examples_per_second'] = round(summary['train_examples_per_second'], 1)
  logging.info('result: %s', summary)
  print(json.dumps(summary, indent=2))
  return result
