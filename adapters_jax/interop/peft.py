"""PEFT format: `adapter_config.json` + `adapter_model.safetensors` (`save_pretrained` of a PeftModel).

What maps exactly (checked against `peft` 0.21.2 on transformers' PyTorch BERT/RoBERTa):

  ours                                      PEFT
  lora at any Linear site                   LORA: `<module>.lora_A.weight [r, in]`, `lora_B.weight [out, r]`,
                                            update (lora_alpha / r) B A (`use_rslora`: alpha / sqrt(r))
  ia3 `output` / `input` at a Linear site   IA3: `<module>.ia3_l` `[out, 1]`, or `[1, in]` for
                                            `feedforward_modules` (the input is scaled)
  trained head / layer norms                `modules_to_save` (`classifier`, `...LayerNorm`)

Module names carry the model prefix (`base_model.model.bert.encoder.layer.0...`); `target_modules`
and `modules_to_save` are written as suffixes without it. Bottleneck adapters and Compacter have no
PEFT equivalent. Refused on import: DoRA, LoRA biases, per-module ranks or alphas
(`rank_pattern`/`alpha_pattern`), `fan_in_fan_out`, layer replication, inits that change the base
other than PiSSA/OLoRA (`init_lora_weights`, kept as our `init_weights`), and other PEFT types.
"""

from __future__ import annotations

import json
import logging
import pathlib
import re

import numpy as np

from adapters_jax.interop.naming import (
  MODEL_PREFIXES,
  InteropError,
  base_leaf_to_hf,
  base_leaf_value_to_hf,
  hf_to_base_leaf,
  hf_to_site,
  read_adapter_weights,
  read_json,
  site_to_hf,
  split_site,
  torch_linear,
)
from adapters_jax.interop.portable import PortableAdapter, base_from_metadata, base_metadata
from adapters_jax.methods import IA3Config, LoRAConfig
from adapters_jax.models.decoder_config import MODEL_TYPES as DECODER_MODEL_TYPES
from adapters_jax.models.hf_files import write_safetensors
from adapters_jax.models.registry import portable_name
from adapters_jax.splicing.sites import LAYER_NORM_PARAMS

CONFIG_FILE, WEIGHTS_FILE = 'adapter_config.json', 'adapter_model.safetensors'
log = logging.getLogger(__name__)
PEFT_PREFIX = 'base_model.model.'


# ------------------------------------------------------------------------------------------------
# Export.


def export_adapter(adapter: PortableAdapter, out: str | pathlib.Path, model_type: str) -> pathlib.Path:
  """Writes `adapter` (LoRA or (IA)3) as a PEFT directory for a transformers `model_type` model.

  `out` is an existing empty directory (`convert.export_checkpoint` stages it). Load it with
  `peft.PeftModel.from_pretrained(<transformers model>, out)`, or with the class its `task_type`
  names (`peft.AutoPeftModelForSequenceClassification.from_pretrained(out)`), which loads the base
  from `base_model_name_or_path`: the hub id of a packaged base, or a local base's absolute path.
  """
  method = adapter.method
  if method.kind not in ('lora', 'ia3'):
    raise InteropError(f'Method kind {method.kind!r} has no PEFT equivalent; PEFT exports: '
                       "['ia3', 'lora'] (use --format=adapters for bottleneck and Compacter adapters).")
  prefix = PEFT_PREFIX + MODEL_PREFIXES[model_type]
  tensors: dict[str, np.ndarray] = {}
  targets, feedforward = [], []
  for path, placement in adapter.sites.items():
    module = site_to_hf(path)
    targets.append(module)
    leaf = f'{path}/adapters/{adapter.name}/'
    if method.kind == 'lora':
      tensors[f'{prefix}{module}.lora_A.weight'] = torch_linear(adapter.leaves[leaf + 'lora_a'])  # [r, in]
      tensors[f'{prefix}{module}.lora_B.weight'] = torch_linear(adapter.leaves[leaf + 'lora_b'])  # [out, r]
    elif placement == 'input':
      feedforward.append(module)
      tensors[f'{prefix}{module}.ia3_l'] = adapter.leaves[leaf + 'scale'][None, :]  # [1, in]
    else:
      tensors[f'{prefix}{module}.ia3_l'] = adapter.leaves[leaf + 'scale'][:, None]  # [out, 1]
  modules_to_save = set()
  for path, value in adapter.base_leaves().items():
    name = base_leaf_to_hf(path, model_type)
    module = name.split('.')[0] if name.startswith('classifier') else name.rsplit('.', 1)[0]
    modules_to_save.add(module.removeprefix(MODEL_PREFIXES[model_type]))
    tensors[PEFT_PREFIX + name] = base_leaf_value_to_hf(path, value)
  config = {
      'peft_type': 'LORA' if method.kind == 'lora' else 'IA3',
      'task_type': peft_task_type(model_type, has_head=any(m.startswith('classifier')
                                                          for m in modules_to_save)),
      'base_model_name_or_path': portable_name(adapter.base['name']) if adapter.base.get('name') else None,
      'revision': adapter.base.get('revision') or None,
      'inference_mode': True, 'target_modules': targets, 'fan_in_fan_out': False,
      'modules_to_save': sorted(modules_to_save) or None,
  }
  if method.kind == 'lora':
    config.update({'r': method.rank, 'lora_alpha': method.alpha, 'lora_dropout': method.dropout,
                   'bias': 'none', 'use_rslora': method.use_rslora, 'use_dora': False,
                   'init_lora_weights': True, 'rank_pattern': {}, 'alpha_pattern': {}})
  else:
    config.update({'feedforward_modules': feedforward, 'init_ia3_weights': True})
  out = pathlib.Path(out)
  (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + '\n')
  write_safetensors(out / WEIGHTS_FILE, tensors, base_metadata(adapter))
  return out


def peft_task_type(model_type: str, *, has_head: bool) -> str:
  """PEFT's `task_type` (which `AutoPeftModelFor...` class opens the export) for a base family:
  encoders with a classification/regression head -> SEQ_CLS, without -> FEATURE_EXTRACTION;
  T5 -> SEQ_2_SEQ_LM; decoders -> CAUSAL_LM (the task kinds of `task_kinds.choice`)."""
  if model_type == 't5':
    return 'SEQ_2_SEQ_LM'
  if model_type in DECODER_MODEL_TYPES:
    return 'CAUSAL_LM'
  return 'SEQ_CLS' if has_head else 'FEATURE_EXTRACTION'


# ------------------------------------------------------------------------------------------------
# Import.


def import_adapter(directory: str | pathlib.Path, name: str) -> PortableAdapter:
  """Reads a PEFT LoRA or (IA)3 directory (safetensors) as adapter `name`."""
  directory = pathlib.Path(directory)
  if not (directory / WEIGHTS_FILE).is_file() and (directory / 'adapter_model.bin').is_file():
    raise InteropError(f'{directory} holds pickled weights (adapter_model.bin), which are never loaded; '
                       're-save it with `model.save_pretrained(dir, safe_serialization=True)`.')
  config = read_json(directory / CONFIG_FILE)
  where = directory / CONFIG_FILE
  peft_type = config['peft_type']
  if peft_type not in ('LORA', 'IA3'):
    raise InteropError(f'{where}: peft_type {peft_type!r} has no equivalent here; importable: LORA, IA3.')
  _refuse(config, where)
  tensors, metadata = read_adapter_weights(directory / WEIGHTS_FILE)
  suffix = re.compile(r'\.(lora_A\.weight|lora_B\.weight|ia3_l)$')
  leaves, layers_by_kind, placements, rest = {}, {}, {}, {}
  for key, value in tensors.items():
    module_key = key.removeprefix(PEFT_PREFIX)
    match = suffix.search(module_key)
    if match is None:
      rest[module_key] = value
      continue
    module = module_key[:match.start()]
    site = hf_to_site(module)
    if site is None:
      raise InteropError(f'{directory / WEIGHTS_FILE}: {key} adapts module {module!r}, which is no site '
                         'of our BERT/RoBERTa (attention query/key/value/output, FFN intermediate/output).')
    stem = f'{site}/adapters/{name}/'
    if peft_type == 'LORA':
      leaves[stem + ('lora_a' if match.group(1).startswith('lora_A') else 'lora_b')] = torch_linear(value)
      placement = 'parallel'
    elif _is_feedforward(config, module):
      leaves[stem + 'scale'], placement = value[0, :], 'input'  # [1, in] -> [in]
    else:
      leaves[stem + 'scale'], placement = value[:, 0], 'output'  # [out, 1] -> [out]
    layer, inner = split_site(site)
    layers_by_kind.setdefault((inner, placement), set()).add(layer)
    placements[site] = placement
  base = {}
  for key, value in rest.items():
    mapped = hf_to_base_leaf(key)
    if mapped is None:
      raise InteropError(f'{directory / WEIGHTS_FILE}: tensor {PEFT_PREFIX}{key} has no place here '
                         '(only LoRA/(IA)3 weights, layer norms and the classification head).')
    base[mapped[0]] = mapped[1](value)
  sites = tuple((rf'(.*/)?layer_({"|".join(str(i) for i in sorted(layers))})/{inner}', placement)
                for (inner, placement), layers in sorted(layers_by_kind.items()))
  if not sites:
    raise InteropError(f'{directory / WEIGHTS_FILE} holds no LoRA/(IA)3 weights.')
  train_also = (LAYER_NORM_PARAMS,) if any('layer_norm' in p for p in base) else ()
  if peft_type == 'LORA':
    rank = int(config['r'])
    method = LoRAConfig(sites=sites, rank=rank, alpha=float(config['lora_alpha']),
                        dropout=float(config['lora_dropout']), use_rslora=bool(config['use_rslora']),
                        train_also=train_also, init_weights=lora_init_weights(config, where))
  else:
    method = IA3Config(sites=sites, train_also=train_also)
  identity = base_from_metadata(metadata)
  if not identity and config.get('base_model_name_or_path'):
    # Files not made here name their base only: kept for people, not checked.
    identity = {'name': str(config['base_model_name_or_path'])}
    log.info('%s was trained on %r (not checked against the base it is imported onto).', directory,
             identity['name'])
  return PortableAdapter(name=name, method=method, leaves={**leaves, **base}, sites={}, base=identity)


def lora_init_weights(config: dict, where: pathlib.Path) -> str:
  """Our `LoRAConfig.init_weights` for PEFT's `init_lora_weights`: PiSSA/OLoRA adapters run beside
  the residual their init leaves in the base (PEFT rebuilds it on load; so does our restore); the
  other inits only set the starting values, which the file's weights replace."""
  init = config.get('init_lora_weights', True)
  if init in (True, False, None, 'gaussian'):
    return 'default'
  if init == 'olora' or re.fullmatch(r'pissa(_niter_\d+)?', str(init)):
    return init
  raise InteropError(f'{where}: init_lora_weights={init!r} changes the base in a way not rebuilt '
                     "here; only True, 'gaussian', 'pissa', 'pissa_niter_<K>' and 'olora' map.")


def _refuse(config: dict, where: pathlib.Path) -> None:
  """Refuses every PEFT option with no exact equivalent, naming it."""
  checks = {'use_dora': (False, 'no DoRA'), 'lora_bias': (False, 'LoRA B has no bias here'),
            'bias': ('none', 'base biases stay frozen'), 'rank_pattern': ({}, 'one rank for every site'),
            'alpha_pattern': ({}, 'one alpha for every site'), 'fan_in_fan_out': (False, 'Linear weights'),
            'layer_replication': (None, 'no layer replication'), 'target_parameters': (None, 'modules only')}
  for option, (value, reason) in checks.items():
    if option in config and config[option] not in (value, None if value == {} else value):
      raise InteropError(f'{where}: {option}={config[option]!r} cannot be represented here ({reason}); '
                         f'only {option}={value!r} maps exactly.')


def _is_feedforward(config: dict, module: str) -> bool:
  """PEFT's own rule: a regex string is full-matched, a list is matched as name suffixes."""
  feedforward = config['feedforward_modules'] or []
  if isinstance(feedforward, str):
    return bool(re.fullmatch(feedforward, module))
  return any(module.endswith(target) for target in feedforward)
