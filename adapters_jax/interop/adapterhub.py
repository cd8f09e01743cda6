"""AdapterHub `adapters` 1.x format: `save_adapter` / `load_adapter` directories, safetensors only.

This file: the format's names and the export; `adapterhub_import` reads such directories.

A directory holds `adapter_config.json` + `adapter.safetensors`, and with a task head
`head_config.json` + `model_head.safetensors` (a static transformers head: `classifier.*`).

What maps exactly (checked against `adapters` 1.3.0 on transformers' PyTorch BERT/RoBERTa):

  ours                                              adapters
  bottleneck, `output` at attention/output          `mh_adapter` (original_ln_before=False,
  bottleneck, `output` at ffn/output                `output_adapter`  residual_before_ln=True)
  bottleneck, `parallel` to the ffn block           `output_adapter`, `is_parallel`
  compacter (same sites)                            the same with `phm_layer` (factorized W, one
                                                    shared rule: `shared_parameters.<name>.phm_rule`)
  compacter rank=None / shared_rule=False           `factorized_phm_W=False` (`W`) / per-layer
    (phm_adapter: both)                             `shared_phm_rule=False` (`<projection>.phm_rule`)
  lora at query/key/value/ffn intermediate/output   `loras.<name>.lora_A [r, in]`, `lora_B [out, r]`
  ia3 `output` at the same sites                    composition_mode `scale`, `lora_B [out, 1]`

Refused, because no exact mapping exists: `original_ln_before=True` (their `seq_bn` / Pfeiffer and
`compacter++` presets: the adapter reads LayerNorm(h + residual) and the block normalises twice),
layer norms inside the adapter (`ln_before`/`ln_after`; our `layer_norm_before` has another epsilon),
gating, learned scaling, (IA)3 on a projection's input (our FFN default), LoRA/(IA)3 on the attention
output projection. Prefix tuning (also on GPT-2 and Llama) and prompt tuning
(`insert_at='embeddings_output'`) map through `adapterhub_prompts`.

Trained base layer norms (`houlsby`) are written into `adapter.safetensors` under their transformers
names: `load_adapter` loads every tensor of that file into the model, so they replace the base's
layer norms for every adapter on it (and for the model with adapters off), and AdapterHub's own
`save_adapter` drops them again. `base_leaves_notice` says so in one line; the `double_seq_bn` preset
(Houlsby's adapters, base frozen) exports a self-contained adapter.
"""

from __future__ import annotations

import pathlib

import numpy as np

from adapters_jax.interop import adapterhub_prompts
from adapters_jax.interop.naming import (
  MODEL_PREFIXES,
  InteropError,
  base_leaf_to_hf,
  base_leaf_value_to_hf,
  split_site,
  torch_linear,
)
from adapters_jax.interop.portable import PortableAdapter, base_hf_config, base_metadata
from adapters_jax.models.hf_files import write_safetensors
from adapters_jax.splicing.sites import FFN_INTERMEDIATE, FFN_OUTPUT, KEY, QUERY, VALUE

FORMAT_VERSION = 'adapters.1.3.0'
CONFIG_FILE, WEIGHTS_FILE = 'adapter_config.json', 'adapter.safetensors'
HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = 'head_config.json', 'model_head.safetensors'
# Our activation names <-> transformers' ACT2FN names used by `non_linearity`.
ACTIVATION_TO_HF = {'gelu': 'gelu', 'gelu_tanh': 'gelu_new', 'relu': 'relu', 'swish': 'swish',
                    'silu': 'swish', 'tanh': 'tanh'}
ACTIVATION_FROM_HF = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh',
                      'relu': 'relu', 'swish': 'swish', 'silu': 'swish', 'tanh': 'tanh'}
# Bottleneck positions: (our site inside a block, placement) -> (their position, parallel).
_BOTTLENECK_POSITIONS = {('attention/output', 'output'): ('mh', False),
                         ('ffn/output', 'output'): ('output', False),
                         ('ffn', 'parallel'): ('output', True)}
_POSITION_MODULE = {'mh': 'attention.output', 'output': 'output'}
# LoRA/(IA)3 locations: our site inside a block -> (their location flag, attention matrix).
_LORA_LOCATIONS = {'attention/query': ('selfattn_lora', 'q'), 'attention/key': ('selfattn_lora', 'k'),
                   'attention/value': ('selfattn_lora', 'v'),
                   'ffn/intermediate': ('intermediate_lora', None), 'ffn/output': ('output_lora', None)}
_LORA_MODULES = {'q': 'attention.self.query', 'k': 'attention.self.key', 'v': 'attention.self.value',
                 'intermediate_lora': 'intermediate.dense', 'output_lora': 'output.dense'}
# transformers class names: <stem>ForSequenceClassification / <stem>Model.
_CLASS_STEMS = {'bert': 'Bert', 'roberta': 'Roberta', 'gpt2': 'GPT2', 'llama': 'Llama'}
OUR_LORA_SITES = {'q': QUERY, 'k': KEY, 'v': VALUE, 'intermediate_lora': FFN_INTERMEDIATE,
              'output_lora': FFN_OUTPUT}


# ------------------------------------------------------------------------------------------------
# Export.


def export_adapter(adapter: PortableAdapter, out: str | pathlib.Path, model_type: str) -> pathlib.Path:
  """Writes `adapter` as an AdapterHub directory for a transformers `model_type` model (bert/roberta;
  gpt2/llama for prefix tuning).

  `out` is an existing empty directory: `convert.export_checkpoint` stages it, so files of another
  export never remain beside these. Load it with `model.load_adapter(out, set_active=True)`
  (`with_head=True` loads the head too).
  """
  out = pathlib.Path(out)
  kind = adapter.method.kind
  if getattr(adapter.method, 'use_gating', False):
    raise InteropError('A gated adapter (use_gating=True, UniPELT\'s gate) has no AdapterHub export '
                       'here; export an ungated one.')
  if kind == 'prefix_tuning':
    config, tensors = adapterhub_prompts.export_prefix(adapter, model_type)  # full names
  elif kind == 'prompt_tuning':
    config, tensors = adapterhub_prompts.export_prompt(adapter, model_type)  # full names
  elif kind in ('bottleneck', 'compacter', 'lora', 'ia3'):
    config, tensors = (_export_bottleneck if kind in ('bottleneck', 'compacter') else _export_lora)(adapter)
    tensors = {MODEL_PREFIXES[model_type] + k: v for k, v in tensors.items()}
  else:
    raise InteropError(f'Method kind {kind!r} has no AdapterHub export; exportable kinds: '
                       "['bottleneck', 'compacter', 'ia3', 'lora', 'prefix_tuning', 'prompt_tuning'].")
  head = {}
  for path, value in adapter.base_leaves().items():
    name = base_leaf_to_hf(path, model_type)
    (head if name.startswith('classifier') else tensors)[name] = base_leaf_value_to_hf(path, value)
  hf_config = base_hf_config(adapter) or {}
  hidden = int(hf_config.get('hidden_size', hf_config.get('n_embd', 0))) or _hidden_size(adapter)
  model_class = _CLASS_STEMS[model_type] + ('ForSequenceClassification' if head else 'Model')
  meta = {'hidden_size': hidden, 'model_class': model_class, 'model_name': adapter.base.get('name', ''),
          'model_type': model_type, 'version': FORMAT_VERSION}
  _write_json(out / CONFIG_FILE, {'config': config, 'name': adapter.name, **meta})
  write_safetensors(out / WEIGHTS_FILE, tensors, base_metadata(adapter))
  if head:
    labels = adapter.label_names or tuple(f'LABEL_{i}' for i in range(_num_labels(head)))
    _write_json(out / HEAD_CONFIG_FILE, {'config': None, 'name': None, 'num_labels': len(labels),
                                         'label2id': {label: i for i, label in enumerate(labels)}, **meta})
    write_safetensors(out / HEAD_WEIGHTS_FILE, head, {})
  return out


def base_leaves_notice(adapter: PortableAdapter) -> str | None:
  """One line when the export carries trained base weights besides the head (Houlsby's layer norms)
  that AdapterHub's `load_adapter` writes over the base's own; None for a self-contained adapter."""
  names = [p for p in adapter.base_leaves() if not p.startswith('classifier/')]
  if not names:
    return None
  return (f'note: this adapter carries {len(names)} trained base tensors (layer norms); AdapterHub\'s '
          'load_adapter writes them over the model\'s own, for every adapter on it and with adapters '
          'off, and its save_adapter drops them. For a self-contained adapter train method=double_seq_bn '
          '(base frozen).')


def _layers_by_position(adapter: PortableAdapter, positions: dict) -> tuple[dict, list[int]]:
  """`{position: sorted layers}` of the spliced sites, and the leave_out they imply."""
  by_position: dict = {}
  for path, placement in adapter.sites.items():
    layer, inner = split_site(path)
    if (inner, placement) not in positions:
      valid = [f'{site} ({place})' for site, place in positions]
      raise InteropError(
          f'{adapter.method.kind} at {path} ({placement}) has no AdapterHub equivalent; sites that map: '
          f'{valid} inside `encoder/layer_<i>/`: change the method\'s `sites`.')
    by_position.setdefault(positions[(inner, placement)], set()).add(layer)
  layer_sets = {frozenset(layers) for layers in by_position.values()}
  if len(layer_sets) != 1:
    raise InteropError('AdapterHub puts an adapter in the same positions of every layer; these sites '
                       f'differ per layer ({ {str(k): sorted(v) for k, v in by_position.items()} }): '
                       'use the same layers for every site (`leave_out`).')
  layers = sorted(next(iter(layer_sets)))
  leave_out = sorted(set(adapter.method.leave_out) | (set(range(max(layers) + 1)) - set(layers)))
  return {k: sorted(v) for k, v in by_position.items()}, leave_out


def _reduction_factor(hidden: int, size: int) -> float:
  # AdapterHub computes the bottleneck as int(hidden // reduction_factor).
  factor = hidden / size
  return factor if int(hidden // factor) == size else hidden / (size + 0.5)


def _export_bottleneck(adapter: PortableAdapter) -> tuple[dict, dict[str, np.ndarray]]:
  method, name = adapter.method, adapter.name
  if method.kind == 'bottleneck' and method.layer_norm_before:
    raise InteropError('layer_norm_before=True has no exact AdapterHub equivalent (their `ln_before` '
                       'LayerNorm uses epsilon 1e-5, ours 1e-6); train with layer_norm_before=False.')
  by_position, leave_out = _layers_by_position(adapter, _BOTTLENECK_POSITIONS)
  parallel = {p for (_, p) in by_position}
  if len(parallel) != 1:
    raise InteropError('AdapterHub cannot mix sequential and parallel bottlenecks in one adapter.')
  is_parallel = parallel.pop()
  positions = {pos for (pos, _) in by_position}
  compacter = method.kind == 'compacter'
  tensors: dict[str, np.ndarray] = {}
  size = None
  for path in adapter.sites:
    layer, inner = split_site(path)
    position, _ = _BOTTLENECK_POSITIONS[(inner, adapter.sites[path])]
    stem = f'encoder.layer.{layer}.{_POSITION_MODULE[position]}.adapters.{name}.'
    leaves = {p[len(path) + len(f'/adapters/{name}/'):]: v for p, v in adapter.leaves.items()
              if p.startswith(f'{path}/adapters/{name}/')}
    size = leaves['down/bias'].shape[0]
    for ours, theirs in (('down', 'adapter_down.0'), ('up', 'adapter_up')):
      if compacter:
        if method.rank is None:
          tensors[f'{stem}{theirs}.W'] = leaves[f'{ours}/factors']  # [n, in/n, out/n]
        else:
          tensors[f'{stem}{theirs}.W_left'] = leaves[f'{ours}/s']
          tensors[f'{stem}{theirs}.W_right'] = leaves[f'{ours}/t']
        if not method.shared_rule:
          tensors[f'{stem}{theirs}.phm_rule'] = leaves[f'{ours}/rule']  # [n, n, n]
        tensors[f'{stem}{theirs}.b'] = leaves[f'{ours}/bias']
      else:
        tensors[f'{stem}{theirs}.weight'] = torch_linear(leaves[f'{ours}/kernel'])
        tensors[f'{stem}{theirs}.bias'] = leaves[f'{ours}/bias']
  if compacter and method.shared_rule:
    tensors[f'shared_parameters.{name}.phm_rule'] = adapter.leaves[f'adapters/{name}/shared/rule']
  config = {
      'mh_adapter': 'mh' in positions, 'output_adapter': 'output' in positions,
      'reduction_factor': _reduction_factor(_hidden_size(adapter), size),
      'non_linearity': _activation_to_hf(method.activation), 'original_ln_before': False,
      'original_ln_after': True, 'ln_before': False, 'ln_after': False,
      'init_weights': 'mam_adapter' if is_parallel else 'bert', 'init_weights_seed': None,
      'is_parallel': is_parallel, 'scaling': float(method.scaling) if method.kind == 'bottleneck' else 1.0,
      'use_gating': False, 'residual_before_ln': True, 'adapter_residual_before_ln': False,
      'inv_adapter': None, 'inv_adapter_reduction_factor': None, 'cross_adapter': False,
      'leave_out': leave_out, 'dropout': 0.0, 'phm_layer': compacter,
      'phm_dim': method.n if compacter else 4,
      'factorized_phm_W': not compacter or method.rank is not None, 'shared_W_phm': False,
      'shared_phm_rule': not compacter or method.shared_rule, 'factorized_phm_rule': False,
      'phm_c_init': 'normal', 'phm_init_range': 0.0001, 'learn_phm': True,
      'hypercomplex_nonlinearity': 'glorot-uniform',
      'phm_rank': (method.rank or 1) if compacter else 1, 'phm_bias': True, 'stochastic_depth': 0.0,
  }
  return config, tensors


def _export_lora(adapter: PortableAdapter) -> tuple[dict, dict[str, np.ndarray]]:
  method, name = adapter.method, adapter.name
  ia3 = method.kind == 'ia3'
  placement = 'output' if ia3 else 'parallel'
  positions = {(inner, placement): _LORA_LOCATIONS[inner][1] or _LORA_LOCATIONS[inner][0]
               for inner in _LORA_LOCATIONS}
  by_position, leave_out = _layers_by_position(adapter, positions)
  tensors: dict[str, np.ndarray] = {}
  for path in adapter.sites:
    layer, inner = split_site(path)
    stem = f'encoder.layer.{layer}.{_LORA_MODULES[positions[(inner, placement)]]}.loras.{name}.'
    leaf = f'{path}/adapters/{name}/'
    if ia3:
      tensors[stem + 'lora_B'] = adapter.leaves[leaf + 'scale'][:, None]  # [out, 1]
    else:
      tensors[stem + 'lora_A'] = torch_linear(adapter.leaves[leaf + 'lora_a'])  # [r, in]
      tensors[stem + 'lora_B'] = torch_linear(adapter.leaves[leaf + 'lora_b'])  # [out, r]
  config = {
      'architecture': 'lora', 'selfattn_lora': any(p in by_position for p in 'qkv'),
      'intermediate_lora': 'intermediate_lora' in by_position, 'output_lora': 'output_lora' in by_position,
      'leave_out': leave_out, 'r': 1 if ia3 else method.rank,
      # AdapterHub scales by alpha / r: rsLoRA's alpha / sqrt(r) is written as its equivalent alpha.
      'alpha': 1 if ia3 else method.scaling * method.rank,
      'dropout': 0.0 if ia3 else method.dropout, 'attn_matrices': [m for m in 'qkv' if m in by_position],
      'composition_mode': 'scale' if ia3 else 'add', 'init_weights': 'ia3' if ia3 else 'lora',
      'init_weights_seed': None, 'use_gating': False, 'use_dora': False, 'vera_d': None, 'vera_b': None,
      'dtype': None,
  }
  return config, tensors


# ------------------------------------------------------------------------------------------------
# Shared.


def _hidden_size(adapter: PortableAdapter) -> int:
  """The hidden size read from the adapter's leaves (a prefix gives its key width: the hidden size
  but for grouped-query attention)."""
  for path, value in adapter.leaves.items():
    if path.endswith(('/prefix/adapters/' + adapter.name + '/prefixes',
                      '/prefix/adapters/' + adapter.name + '/output/kernel')):  # [., 2 * width]
      return int(value.shape[1] // 2)
    if path.endswith(('/down/kernel', '/lora_a')):
      return int(value.shape[0])
    if path.endswith(('/down/s', '/down/factors')):  # [n, in/n, ...]
      return int(value.shape[0] * value.shape[1])
    if path.endswith('/scale') and '/attention/' in path:
      return int(value.shape[0])
  raise InteropError('Cannot tell the hidden size from the adapter\'s leaves.')


def _num_labels(head: dict[str, np.ndarray]) -> int:
  bias = head['classifier.out_proj.bias'] if 'classifier.out_proj.bias' in head else head['classifier.bias']
  return int(bias.shape[0])


def _activation_to_hf(name: str) -> str:
  if name not in ACTIVATION_TO_HF:
    raise InteropError(f'Activation {name!r} has no transformers name; exportable: '
                       f'{sorted(ACTIVATION_TO_HF)}.')
  return ACTIVATION_TO_HF[name]


def _write_json(path: pathlib.Path, value: dict) -> None:
  import json

  path.write_text(json.dumps(value, indent=2, sort_keys=True) + '\n')
