"""A trained run as a whole Hugging Face model folder, its adapter folded into the base weights.

    export_merged('workdirs/rte-lora', 'exports/rte-merged')
    # exports/rte-merged: config.json, model.safetensors, tokenizer files
    # transformers.AutoModelForSequenceClassification.from_pretrained('exports/rte-merged')

The adapter is merged where its method merges (LoRA incl. PiSSA/OLoRA, DoRA, VeRA, (IA)3:
`splicing.merge.merge_adapter`); bottleneck adapters, Compacter and fusion cannot be and are refused. A
run without adapter (full fine-tuning, head only) is written as trained. The tensors are the base
checkpoint's own, under their own names, with every one our model holds replaced by its value
(transposed or reshaped back by the inverse of the family's import transform), so what we do not
model (tied copies, buffers) stays as the base had it. BERT/RoBERTa are written for
`AutoModelForSequenceClassification` (`bert.`/`roberta.` prefixes, the head, `id2label`), T5 for
`AutoModelForSeq2SeqLM`, decoders (GPT-2, Llama family) for `AutoModelForCausalLM`.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from adapters_jax.interop.naming import MODEL_PREFIXES, InteropError, base_leaf_to_hf
from adapters_jax.interop.output_directory import refuse_to_mix, staged_directory
from adapters_jax.models import bert_import, decoder_import, scan_layout, t5_import
from adapters_jax.models.encoder_config import MODEL_TYPES as ENCODER_MODEL_TYPES
from adapters_jax.models.hf_files import Pretrained, read_hf_config, read_safetensors, write_hf_checkpoint
from adapters_jax.splicing.merge import merge_adapter
from adapters_jax.splicing.splice import Spliced
from adapters_jax.splicing.tree import Params, is_adapter_path

_ENCODER_CLASSES = {'bert': 'BertForSequenceClassification',
                    'roberta': 'RobertaForSequenceClassification'}


def export_merged(workdir: str | os.PathLike, out: str | os.PathLike,
                  overwrite: bool = False) -> pathlib.Path:
  """Writes the run in `workdir` (its best checkpoint) as a merged HF model folder `out`.

  Raises:
    InteropError: the run's method cannot be merged, or `out` holds files (without `overwrite`).
  """
  from adapters_jax.predict.runs import read_run  # the run machinery, only for this entry point
  from adapters_jax.train.experiment import build_experiment
  from adapters_jax.train.members import load_best

  refuse_to_mix(out, overwrite=overwrite)
  run = read_run(os.fspath(workdir))
  experiment = build_experiment(run.config, run.spec)
  if experiment.adapter_name is not None:
    check_mergeable(experiment.spliced, experiment.adapter_name)
  params = load_best(experiment, run.workdir)
  with staged_directory(out, overwrite=overwrite) as staging:
    write_merged(staging, experiment.pretrained, experiment.spliced, params,
                 experiment.adapter_name, label_names=experiment.spec.label_names)
  return pathlib.Path(out)


def check_mergeable(spliced: Spliced, name: str) -> None:
  """Raises InteropError, in one line, unless adapter `name` folds into the base weights."""
  try:
    spliced.adapter(name).method.check_merge()
  except NotImplementedError as e:
    raise InteropError(f'--format=merged folds adapter {name!r} into the base weights, but {e} '
                       'Export the adapter alone (--format=adapters or peft) instead.') from None


def write_merged(directory: str | os.PathLike, pretrained: Pretrained, spliced: Spliced,
                 params: Params, name: str | None,
                 label_names: Sequence[str] | None = None) -> pathlib.Path:
  """Merges adapter `name` (None: nothing to merge) and writes the HF folder into `directory`.

  Args:
    pretrained: the base as loaded (its folder gives the tensor names, config and tokenizer).
    spliced, params: the spliced model and its trained params.
    label_names: BERT/RoBERTa: the head's class names, for `id2label` (default LABEL_i).
  """
  if name is not None:
    check_mergeable(spliced, name)
    spliced, params = merge_adapter(spliced, params, name)
  hf_config = read_hf_config(pretrained.directory)
  model_type = hf_config.get('model_type')
  tensors = merged_tensors(read_safetensors(pretrained.directory), params, model_type)
  config = merged_config(hf_config, tensors, label_names)
  return write_hf_checkpoint(directory, config, tensors, tokenizer_dir=pretrained.directory)


def merged_tensors(base: Mapping[str, np.ndarray], params: Params,
                   model_type: str) -> dict[str, np.ndarray]:
  """The base checkpoint's tensors (`{HF name: array}`) with the values of `params` (merged, any
  layout) written in, in transformers' layout.

  Raises:
    InteropError: a param with no transformers name (nothing is dropped silently).
  """
  params = dict(params)
  if scan_layout.is_scanned(params):
    params = scan_layout.unstack_layers(params)
  ours = {p: np.asarray(v, np.float32) for p, v in traverse_util.flatten_dict(params, sep='/').items()
          if not is_adapter_path(p)}
  encoder = model_type in ENCODER_MODEL_TYPES
  if model_type == 't5':
    name_to_ours = t5_import.t5_name_to_ours
  elif encoder:
    name_to_ours = bert_import.hf_name_to_ours
  else:
    name_to_ours = decoder_import.hf_name_table(model_type)
    if model_type == 'gpt2':
      base = decoder_import.split_fused_qkv(base)
  out, covered = {}, set()
  for name, value in base.items():
    mapped = name_to_ours(name)
    if mapped is None or mapped[0] not in ours:
      if not encoder:  # tied copies, buffers: as the base had them
        out[name] = value
      continue  # encoders: pre-training heads and buffers a classifier does not load
    path, transform = mapped
    if encoder and not path.startswith('classifier/'):
      name = MODEL_PREFIXES[model_type] + re.sub(r'^(bert|roberta)\.', '', name)
    out[name] = _to_hf(transform, ours[path], value.shape)
    covered.add(path)
  for path in sorted(set(ours) - covered):  # parts the base file lacks: a fresh head or pooler
    if not encoder:
      raise InteropError(f'{path} has no tensor in the base checkpoint to take its name from.')
    hf_name = (MODEL_PREFIXES[model_type] + path.replace('/kernel', '.weight').replace('/', '.')
               if path.startswith('pooler/') else base_leaf_to_hf(path, model_type))
    out[hf_name] = ours[path].T if path.endswith('/kernel') else ours[path]
  return decoder_import.fuse_split_qkv(out) if model_type == 'gpt2' else out


def _to_hf(transform: Callable[[np.ndarray], np.ndarray], value: np.ndarray,
           hf_shape: tuple[int, ...]) -> np.ndarray:
  """The inverse of an import transform (a transpose or reshape: it moves elements, never changes
  them), found by passing it the HF tensor's flat indices."""
  index = np.arange(int(np.prod(hf_shape)), dtype=np.int64).reshape(hf_shape)
  where = np.asarray(transform(index))  # our shape; each entry: the HF flat index it came from
  if where.shape != value.shape:
    raise InteropError(f'A tensor of shape {value.shape} does not fit its base tensor {hf_shape}.')
  flat = np.empty(index.size, value.dtype)
  flat[where.reshape(-1)] = value.reshape(-1)
  return flat.reshape(hf_shape)


def merged_config(hf_config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                  label_names: Sequence[str] | None) -> dict[str, Any]:
  """The base's config.json; BERT/RoBERTa with a head get the classifier's class and labels."""
  config = dict(hf_config)
  model_type = config.get('model_type')
  bias = tensors.get('classifier.bias', tensors.get('classifier.out_proj.bias'))
  if model_type in _ENCODER_CLASSES and bias is not None:
    labels = list(label_names) if label_names else [f'LABEL_{i}' for i in range(bias.shape[0])]
    if len(labels) != bias.shape[0]:
      labels = [f'LABEL_{i}' for i in range(bias.shape[0])]  # a regression head has one output
    config.update(architectures=[_ENCODER_CLASSES[model_type]],
                  id2label={str(i): label for i, label in enumerate(labels)},
                  label2id={label: i for i, label in enumerate(labels)})
    if bias.shape[0] == 1:
      config['problem_type'] = 'regression'
  config['torch_dtype'] = 'float32'
  return config
