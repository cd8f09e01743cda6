"""AdapterHub `adapters` 1.x directories -> our naming (see `adapterhub` for what maps exactly).

Everything that has no exact equivalent here is refused with the option that prevents it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re

import numpy as np

from adapters_jax.interop import adapterhub_prompts
from adapters_jax.interop.adapterhub import (
  ACTIVATION_FROM_HF,
  CONFIG_FILE,
  HEAD_CONFIG_FILE,
  HEAD_WEIGHTS_FILE,
  OUR_LORA_SITES,
  WEIGHTS_FILE,
)
from adapters_jax.interop.naming import (
  InteropError,
  hf_to_base_leaf,
  read_adapter_weights,
  read_json,
  torch_linear,
)
from adapters_jax.interop.portable import PortableAdapter, base_from_metadata
from adapters_jax.methods import BottleneckConfig, CompacterConfig, IA3Config, LoRAConfig
from adapters_jax.splicing.sites import ATTENTION_OUTPUT, FFN_BLOCK, FFN_OUTPUT, LAYER_NORM_PARAMS

log = logging.getLogger(__name__)


def import_adapter(directory: str | pathlib.Path) -> PortableAdapter:
  """Reads an AdapterHub directory (safetensors) into our naming, refusing what does not map exactly."""
  directory = pathlib.Path(directory)
  if not (directory / WEIGHTS_FILE).is_file() and (directory / 'pytorch_adapter.bin').is_file():
    raise InteropError(f'{directory} holds pickled weights (pytorch_adapter.bin), which are never '
                       'loaded; re-save it with `model.save_adapter(dir, name, use_safetensors=True)`, or '
                       '(prefix tuning, whose tensors AdapterHub shares) write adapter.safetensors with '
                       '`safetensors.torch.save_file({k: v.clone() for k, v in torch.load(bin, '
                       'weights_only=True).items()}, path)`.')
  saved = read_json(directory / CONFIG_FILE)
  config, name = saved['config'], saved['name']
  tensors, metadata = read_adapter_weights(directory / WEIGHTS_FILE)
  # Bottleneck configs (BnConfig and its presets) are saved without an `architecture` key.
  architecture = config.get('architecture') or 'bottleneck'  # a foreign file, not our config
  if architecture == 'bottleneck':
    method, leaves = _import_bottleneck(config, name, tensors)
  elif architecture == 'lora':
    method, leaves = _import_lora(config, name, tensors)
  elif architecture == 'prefix_tuning':
    method, leaves, rest = adapterhub_prompts.import_prefix(config, saved.get('model_type'), name, tensors,
                                                            directory / WEIGHTS_FILE)
    base = _base_leaves(rest, WEIGHTS_FILE)
    leaves.update(base)
    if base:
      method = dataclasses.replace(method, train_also=(LAYER_NORM_PARAMS,))
  elif architecture == 'prompt_tuning':
    method, leaves, rest = adapterhub_prompts.import_prompt(config, name, tensors, directory / WEIGHTS_FILE)
    leaves.update(_base_leaves(rest, WEIGHTS_FILE))
  else:
    raise InteropError(f'{directory / CONFIG_FILE}: architecture {architecture!r} has no equivalent '
                       "here; importable: bottleneck adapters (no `architecture`), 'lora' (LoRA, (IA)3), "
                       "'prefix_tuning', 'prompt_tuning'.")
  label_names = None
  if (directory / HEAD_WEIGHTS_FILE).is_file():
    head, _ = read_adapter_weights(directory / HEAD_WEIGHTS_FILE)
    leaves.update(_base_leaves(head, directory / HEAD_WEIGHTS_FILE))
    label2id = read_json(directory / HEAD_CONFIG_FILE)['label2id']
    if label2id:
      label_names = tuple(sorted(label2id, key=label2id.__getitem__))
  return PortableAdapter(name=name, method=method, leaves=leaves, sites={},
                         base=base_from_metadata(metadata), label_names=label_names)


def _require(config: dict, expected: dict, what: str) -> None:
  for option, (value, reason) in expected.items():
    if option in config and config[option] != value:
      raise InteropError(f'{what}: {option}={config[option]!r} cannot be represented here ({reason}); '
                         f'only {option}={value!r} maps exactly.')


def _import_bottleneck(config: dict, name: str, tensors: dict) -> tuple:
  what = 'AdapterHub bottleneck adapter'
  _require(config, {
      'original_ln_before': (False, 'the adapter would read LayerNorm(h + residual): their seq_bn/'
                             'Pfeiffer/compacter++ placement, ours sits on the projection output'),
      'original_ln_after': (True, 'the block\'s residual + LayerNorm must follow the adapter'),
      'residual_before_ln': (True, 'the adapter\'s residual is the projection output'),
      'ln_before': (False, 'no LayerNorm inside our adapters with their epsilon'),
      'ln_after': (False, 'no LayerNorm after our adapters'), 'use_gating': (False, 'no gating'),
      'inv_adapter': (None, 'no invertible adapters'), 'shared_W_phm': (False, 'per-site W only'),
      'factorized_phm_rule': (False, 'the rule is one [n, n, n] tensor'),
      'phm_bias': (True, 'PHM layers have a bias')}, what)
  if not isinstance(config['scaling'], (int, float)):
    raise InteropError(f'{what}: scaling={config["scaling"]!r} is learned; only a constant scaling maps.')
  if config['is_parallel'] and config['mh_adapter']:
    raise InteropError(f'{what}: is_parallel with mh_adapter=True (parallel to attention) has no site '
                       'here; only output_adapter=True maps for parallel adapters.')
  pattern = re.compile(rf'^(?:(?:bert|roberta)\.)?encoder\.layer\.(\d+)\.(attention\.output|output)'
                       rf'\.adapters\.{re.escape(name)}\.(adapter_down\.0|adapter_up)'
                       r'\.(weight|bias|W_left|W_right|W|phm_rule|b)$')
  parallel, compacter = config['is_parallel'], config['phm_layer']
  rename = {'weight': 'kernel', 'bias': 'bias', 'W_left': 's', 'W_right': 't', 'W': 'factors',
            'phm_rule': 'rule', 'b': 'bias'}
  leaves, rest = {}, {}
  for key, value in tensors.items():
    match = pattern.match(key)
    if match is None:
      if re.fullmatch(rf'(?:(?:bert|roberta)\.)?shared_parameters\.{re.escape(name)}\.phm_rule', key):
        leaves[f'adapters/{name}/shared/rule'] = value
      else:
        rest[key] = value
      continue
    layer, module, projection, leaf = match.groups()
    site = ('ffn' if parallel else 'ffn/output') if module == 'output' else 'attention/output'
    ours = 'down' if projection == 'adapter_down.0' else 'up'
    leaves[f'encoder/layer_{layer}/{site}/adapters/{name}/{ours}/{rename[leaf]}'] = (
        torch_linear(value) if leaf == 'weight' else value)
  base = _base_leaves(rest, WEIGHTS_FILE)
  sizes = {v.shape[0] for p, v in leaves.items() if p.endswith('/down/bias')}
  if not sizes:
    raise InteropError(f'{what}: {WEIGHTS_FILE} holds no weights of adapter {name!r}.')
  if len(sizes) != 1:
    raise InteropError(f'{what}: bottleneck sizes differ per layer ({sorted(sizes)}); ours are one size.')
  if parallel:
    sites = ((FFN_BLOCK, 'parallel'),)
  else:
    positions = ((ATTENTION_OUTPUT, config['mh_adapter']), (FFN_OUTPUT, config['output_adapter']))
    sites = tuple((site, 'output') for site, on in positions if on)
  for option in ('dropout', 'stochastic_depth'):
    if option in config and config[option]:
      # Training-time only: predictions are the same, continued training here runs without it.
      log.warning('%s: %s=%s is not carried over (our bottleneck adapters have none).', what, option,
                  config[option])
  common = dict(sites=sites, size=sizes.pop(), activation=_activation_from_hf(config['non_linearity']),
                leave_out=tuple(int(i) for i in config['leave_out']),
                train_also=(LAYER_NORM_PARAMS,) if base else ())
  if compacter:
    if float(config['scaling']) != 1.0:
      raise InteropError(f'{what}: scaling={config["scaling"]} on a Compacter; ours is unscaled (1.0).')
    # factorized_phm_W=False: full W (our rank=None); shared_phm_rule=False: a rule per PHM layer.
    rank = int(config['phm_rank']) if config['factorized_phm_W'] else None
    method = CompacterConfig(n=int(config['phm_dim']), rank=rank,
                             shared_rule=bool(config['shared_phm_rule']), **common)
  else:
    method = BottleneckConfig(reduction_factor=None, scaling=float(config['scaling']),
                              init='zero' if parallel else 'houlsby', **common)
  return method, {**leaves, **base}


def _import_lora(config: dict, name: str, tensors: dict) -> tuple:
  what = 'AdapterHub LoRA/(IA)3 adapter'
  _require(config, {'use_gating': (False, 'no gating'), 'use_dora': (False, 'no DoRA'),
                    'vera_d': (None, 'no VeRA'), 'vera_b': (None, 'no VeRA')}, what)
  ia3 = config['composition_mode'] == 'scale'
  if config['composition_mode'] not in ('add', 'scale'):
    raise InteropError(f'{what}: composition_mode={config["composition_mode"]!r}; valid: add, scale.')
  pattern = re.compile(rf'^(?:(?:bert|roberta)\.)?encoder\.layer\.(\d+)\.(.+)\.loras\.{re.escape(name)}\.'
                       r'(lora_A|lora_B)$')
  module_to_site = {module: site for site, module in
                    (('attention/query', 'attention.self.query'), ('attention/key', 'attention.self.key'),
                     ('attention/value', 'attention.self.value'), ('ffn/intermediate', 'intermediate.dense'),
                     ('ffn/output', 'output.dense'))}
  leaves, rest = {}, {}
  for key, value in tensors.items():
    match = pattern.match(key)
    if match is None or match.group(2) not in module_to_site:
      rest[key] = value
      continue
    layer, module, which = match.groups()
    stem = f'encoder/layer_{layer}/{module_to_site[module]}/adapters/{name}/'
    if ia3:
      leaves[stem + 'scale'] = value[:, 0] * float(config['alpha'])  # [out]
    else:
      leaves[stem + ('lora_a' if which == 'lora_A' else 'lora_b')] = torch_linear(value)
  base = _base_leaves(rest, WEIGHTS_FILE)
  keys = [m for m in config['attn_matrices']] if config['selfattn_lora'] else []
  keys += [loc for loc in ('intermediate_lora', 'output_lora') if config[loc]]
  placement = 'output' if ia3 else 'parallel'
  common = dict(sites=tuple((OUR_LORA_SITES[k], placement) for k in keys),
                leave_out=tuple(int(i) for i in config['leave_out']),
                train_also=(LAYER_NORM_PARAMS,) if base else ())
  if ia3:
    return IA3Config(**common), {**leaves, **base}
  return LoRAConfig(rank=int(config['r']), alpha=float(config['alpha']), dropout=float(config['dropout']),
                    **common), {**leaves, **base}


def _base_leaves(tensors: dict[str, np.ndarray], where) -> dict[str, np.ndarray]:
  """Layer norms / head tensors -> our leaves; any other tensor is refused by name."""
  out, unknown = {}, []
  for key, value in tensors.items():
    mapped = hf_to_base_leaf(key)
    if mapped is None:
      unknown.append(key)
    else:
      out[mapped[0]] = mapped[1](value)
  if unknown:
    raise InteropError(f'{where}: tensors with no place here: {sorted(unknown)[:8]}.')
  return out


def _activation_from_hf(name: str) -> str:
  if name.lower() not in ACTIVATION_FROM_HF:
    raise InteropError(f'non_linearity={name!r} has no exact equivalent here; importable: '
                       f'{sorted(ACTIVATION_FROM_HF)}.')
  return ACTIVATION_FROM_HF[name.lower()]
