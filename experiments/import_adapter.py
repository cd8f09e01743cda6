r"""Imports an AdapterHub `adapters` or PEFT adapter (safetensors) as one of our adapter checkpoints.

  python -m experiments.import_adapter --from=downloads/rte-lora --format=peft \
      --model=roberta-base --out=imported/rte-lora
  python -m experiments.import_adapter --from=downloads/houlsby --format=adapters \
      --model=minilm-l6 --out=imported/houlsby

`--model` is the base the adapter was trained on (short name, directory or hub id). The result is
what `save_adapter` writes: restore it with `restore_adapter`, or start training from it. What
cannot be represented exactly here is refused with the option that prevents it; files exported by
`experiments.export` from another base are refused too (`--allow_other_base` loads them anyway).
`--out` must be absent or empty; `--overwrite` replaces it whole. A hub download that gets no
answer fails after `$ADAPTERS_JAX_HUB_TIMEOUT` seconds (default 30).
"""

import os
import sys

from absl import app, flags, logging

from experiments import entry_point

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

flags.DEFINE_string('from', None, 'Directory written by adapters\' save_adapter or PEFT\'s save_pretrained.')
flags.DEFINE_enum('format', None, ['adapters', 'peft'], 'adapters (AdapterHub) or peft.')
flags.DEFINE_string('model', None, 'The base model: short name, directory or hub id.')
flags.DEFINE_string('out', None, 'Adapter checkpoint directory to write.')
flags.DEFINE_string('name', None, 'Adapter name; default: the saved name (AdapterHub) or the folder name '
                    '(PEFT).')
flags.DEFINE_bool('allow_other_base', False, 'Import even when the files name another base model.')
flags.mark_flags_as_required(['from', 'format', 'model', 'out'])
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out directory whole (otherwise refused).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from adapters_jax.checkpoint.disk_full import DiskFullError
  from adapters_jax.checkpoint.save import CheckpointError
  from adapters_jax.interop import InteropError, import_checkpoint
  from adapters_jax.models.registry import HubDownloadError, ModelNotFoundError

  source = FLAGS['from'].value
  try:
    out = import_checkpoint(source, FLAGS.format, FLAGS.model, FLAGS.out, name=FLAGS.name,
                            allow_other_base=FLAGS.allow_other_base, overwrite=FLAGS.overwrite)
  except (InteropError, CheckpointError, ModelNotFoundError, HubDownloadError, DiskFullError) as e:
    sys.exit(f'Cannot import {source}: {e}')
  print(out)


if __name__ == '__main__':
  entry_point.run(main)
