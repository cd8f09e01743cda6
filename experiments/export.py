r"""Exports a training run's adapter to AdapterHub `adapters` or PEFT (safetensors only), or the
whole model with the adapter merged in as a Hugging Face folder.

  python -m experiments.export --workdir=workdirs/rte --format=adapters --out=exports/rte
  python -m experiments.export --workdir=workdirs/rte-lora --format=peft --out=exports/rte-lora
  python -m experiments.export --workdir=workdirs/rte-lora --format=merged --out=exports/rte-merged

Then, in PyTorch: `adapters.init(model); model.load_adapter('exports/rte', set_active=True,
use_safetensors=True)`, or `peft.PeftModel.from_pretrained(model, 'exports/rte-lora')`, with `model`
the same base as the run's (`transformers.AutoModelForSequenceClassification`). The files carry the
base's identity, so `experiments.import_adapter` refuses them on another base. Which methods map to
which format: `adapters_jax/interop/adapterhub.py`, `peft.py`, `adapterhub_prompts.py` (prefix
tuning -> AdapterHub, also on GPT-2 and Llama; prompt tuning with insert_at='embeddings_output')
and `peft_prompts.py` (prompt tuning -> PEFT).
`merged` (LoRA, DoRA, VeRA, (IA)3; any family) writes config.json + model.safetensors + the tokenizer, for
`transformers.AutoModelFor...from_pretrained(out)` (`adapters_jax/interop/merged.py`). `--out` must
be absent or empty; `--overwrite` replaces it whole (the files of an earlier export never stay
beside the new ones).

Decoder (GPT-2, Llama, Qwen2, Mistral, Gemma) and T5 runs export to PEFT (or merged), for
`AutoModelForCausalLM` / `T5ForConditionalGeneration`; a LoRA export of a decoder is what vLLM loads.
"""

import os
import sys

from absl import app, flags, logging

from experiments import entry_point

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

flags.DEFINE_string('workdir', None, 'A training run\'s workdir; its best/ adapter checkpoint is exported.')
flags.DEFINE_enum('format', None, ['adapters', 'peft', 'merged'],
                  'adapters (AdapterHub), peft, or merged (a whole HF model folder).')
flags.DEFINE_string('out', None, 'Directory to write.')
flags.DEFINE_string('model_type', None, 'The base\'s transformers model type (bert, roberta; for peft also '
                    'gpt2, llama, qwen2, mistral, gemma, t5; for an adapters prefix also gpt2, llama); '
                    'default: from the trained head, else from the base\'s config.json.')
flags.mark_flags_as_required(['workdir', 'format', 'out'])
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out directory whole (otherwise refused).')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from adapters_jax.checkpoint.disk_full import DiskFullError
  from adapters_jax.checkpoint.save import CheckpointError
  from adapters_jax.interop import InteropError, export_checkpoint, export_merged
  from adapters_jax.models.registry import HubDownloadError, ModelNotFoundError

  best = os.path.join(FLAGS.workdir, 'best')
  try:
    if FLAGS.format == 'merged':
      out = export_merged(FLAGS.workdir, FLAGS.out, overwrite=FLAGS.overwrite)
    else:
      out = export_checkpoint(best, FLAGS.format, FLAGS.out, model_type=FLAGS.model_type,
                              overwrite=FLAGS.overwrite,
                              notify=lambda line: print(line, file=sys.stderr, flush=True))
  except (InteropError, CheckpointError, ModelNotFoundError, HubDownloadError, DiskFullError) as e:
    sys.exit(f'Cannot export {best}: {e}')
  print(out)


if __name__ == '__main__':
  entry_point.run(main)
