"""AdapterHub's prefix tuning <-> ours (BERT/RoBERTa, GPT-2, Llama) and its prompt tuning (BERT/RoBERTa).

Prefix tuning (`prefix_tuning`, `prefix_tuning_flat`; checked against `adapters` 1.3.0 on
transformers' PyTorch BERT/RoBERTa, GPT-2 and Llama): AdapterHub keeps one pool per location,

    <m>prefix_tuning.prefix_tunings.<name>.self_prefix.{wte.weight, control_trans.{0,2}.{weight,bias}}
    <m>prefix_tuning.prefix_tunings.<name>.self_prefix.control_trans   [P * L * 2 * width]  (flat)

(`<m>`: `bert.`, `roberta.`, `transformer.` for GPT-2, `model.` for Llama), and its saves repeat
every pool tensor under each layer that has a prefix (`<attention>.prefix_tuning.pool.prefix_tunings
.<name>...`, e.g. `model.layers.3.self_attn`): those copies tell which layers the stack holds. The
layout moves through `prefix_layout`; an encoder-only model's `self_prefix` is our `encoder_prefix`.
AdapterHub concatenates the prefix to the keys and values after positions are applied (RoPE on the
real keys only, learned positions counted from the real tokens), as ours does, so the logits match.
Refused: gating (`use_gating`: UniPELT's gate reads the attention's input, which our `keys_values`
hook does not see), another `non_linearity` than tanh, and T5: AdapterHub computes T5's relative
bias over [prefix, real] keys at positions 0..P+T-1 with the queries at 0..T-1 (checked on adapters
1.3.0), so real-real distances move by P, unlike our 'none' (prefix without position) and
'after_prefix' (PEFT's: queries at P+i, distances kept).

Prompt tuning (`prompt_tuning`; checked against `adapters` 1.3.0 on transformers' PyTorch
BERT/RoBERTa): AdapterHub's forward hook on the embeddings module concatenates the prompt to that
module's output (after positions, token types, LayerNorm and dropout; `prefix` or
`prefix_after_bos`), and each layer's pre-hook puts ones in front of the attention mask, so the
real tokens keep their positions and the prompt gets no position, LayerNorm or dropout. That is our
`insert_at='embeddings_output'`:

  ours                                                  AdapterHub
  embeddings/embeddings_output/adapters/<name>/prompt   <m>prompt_tuning.prompt_tunings.<name>.
    [P, d]                                                prompt_embedding.weight  [P, d]
  length, combine                                       prompt_length, combine

(`<m>`: `bert.` / `roberta.`, absent in a save of the bare model.) A head reads position 0 in
both: the first prompt vector with `prefix`, [CLS] with `prefix_after_bos`. The init is not
carried: exports say `random_uniform` (AdapterHub's `from_string` would need a tokenizer at load
time), imports start from the saved prompt. A prompt with `insert_at='input_embeddings'` (before
positions and LayerNorm: PEFT's PROMPT_TUNING, which `--format=peft` writes) is refused
(`PROMPT_PLACEMENT`).
"""

from __future__ import annotations

import re

import numpy as np

from adapters_jax.interop import prefix_layout
from adapters_jax.interop.naming import MODEL_PREFIXES, InteropError
from adapters_jax.interop.portable import PortableAdapter
from adapters_jax.methods import PrefixTuningConfig, PromptTuningConfig
from adapters_jax.methods.prefix_tuning import site_location

# model_type -> (model prefix, attention module of layer {} under it, our keys_values site of layer {}).
FAMILIES = {
    'bert': ('bert.', 'encoder.layer.{}.attention.self', 'encoder/layer_{}/attention/prefix'),
    'roberta': ('roberta.', 'encoder.layer.{}.attention.self', 'encoder/layer_{}/attention/prefix'),
    'gpt2': ('transformer.', 'h.{}.attn', 'decoder/layer_{}/attention/prefix'),
    'llama': ('model.', 'layers.{}.self_attn', 'decoder/layer_{}/attention/prefix'),
}
THEIR_LOCATION = 'self_prefix'  # every attention of these families, encoder or decoder
_LEAVES = {'embedding': 'wte.weight', 'hidden_kernel': 'control_trans.0.weight',
           'hidden_bias': 'control_trans.0.bias', 'output_kernel': 'control_trans.2.weight',
           'output_bias': 'control_trans.2.bias'}
PROMPT_PLACEMENT = (
    "AdapterHub's prompt_tuning adds the prompt after the embeddings' position embeddings and "
    "LayerNorm and leaves the real tokens' positions unshifted; insert_at='input_embeddings' inserts "
    'it before them and counts it in the positions (as PEFT), so the same prompt gives other logits: '
    "train with insert_at='embeddings_output' (or export to PEFT with --format=peft).")
PROMPT_SITE = 'embeddings/embeddings_output'
_PROMPT_POOL = 'prompt_tuning.prompt_tunings.{}.prompt_embedding.weight'


def _family(model_type: str) -> tuple[str, str, str]:
  if model_type == 't5':
    raise InteropError("AdapterHub's T5 prefix gets T5's relative-position buckets with its keys at "
                       '0..P-1 and the real keys at P+j while the queries stay at i (real-real '
                       "distances move by P), which neither positions='none' (no prefix position) "
                       "nor 'after_prefix' (PEFT's: queries at P+i too) is, so the same tensors give "
                       f'other logits; prefix tuning maps to AdapterHub on {sorted(FAMILIES)}.')
  if model_type not in FAMILIES:
    raise InteropError(f'Prefix tuning maps to AdapterHub on {sorted(FAMILIES)}, not {model_type!r}.')
  return FAMILIES[model_type]


def export_prefix(adapter: PortableAdapter, model_type: str) -> tuple[dict, dict[str, np.ndarray]]:
  """`(config, tensors with their full names)` of a prefix-tuning adapter for AdapterHub."""
  method, name = adapter.method, adapter.name
  if method.positions != 'none':
    raise InteropError(f"Prefix tuning with positions={method.positions!r} cannot be exported to "
                       "AdapterHub, whose prefix leaves the real tokens' positions as they are: "
                       "train with positions='none' (or export to PEFT with --format=peft).")
  model_prefix, attention, our_site = _family(model_type)
  layers: list[int] = []
  for path in adapter.sites:
    match = re.fullmatch(our_site.format(r'(\d+)'), path)
    if match is None:
      raise InteropError(f'Prefix site {path!r} is not a self-attention of our {model_type} backbone '
                         f'({our_site.format("<i>")}); AdapterHub has no other prefix location there.')
    layers.append(int(match.group(1)))
  stacked = prefix_layout.stack_leaves(adapter.adapter_leaves(), name, method.flat)
  if len(stacked) != 1:
    raise InteropError(f'Prefix locations {sorted(stacked)}: AdapterHub\'s {model_type} has one.')
  tensors = next(iter(stacked.values()))
  pool = {}
  if method.flat:
    pool['control_trans'] = tensors['prefixes'].reshape(-1)  # [P * L * 2 * width]
  else:
    for ours, theirs in _LEAVES.items():
      value = tensors[ours]
      pool[theirs] = np.ascontiguousarray(value.T) if ours.endswith('kernel') else value
  out = {}
  stems = [f'{model_prefix}prefix_tuning.prefix_tunings'] + [
      f'{model_prefix}{attention.format(layer)}.prefix_tuning.pool.prefix_tunings'
      for layer in sorted(layers)]
  for stem in stems:  # the pool, and AdapterHub's per-layer copies of it
    out.update({f'{stem}.{name}.{THEIR_LOCATION}.{leaf}': value for leaf, value in pool.items()})
  leave_out = sorted(set(method.leave_out) | (set(range(max(layers) + 1)) - set(layers)))
  config = {'architecture': 'prefix_tuning', 'prefix_length': int(method.prefix_length),
            'flat': bool(method.flat), 'bottleneck_size': int(method.bottleneck_size),
            'non_linearity': 'tanh', 'dropout': float(method.dropout), 'encoder_prefix': True,
            'cross_prefix': True, 'leave_out': leave_out, 'use_gating': False, 'shared_gating': True,
            'init_weights_seed': None}
  return config, out


def import_prefix(config: dict, model_type: str, name: str, tensors: dict[str, np.ndarray],
                  where) -> tuple[PrefixTuningConfig, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """`(method, {our leaf: value}, other tensors)` of an AdapterHub prefix-tuning file; the other
  tensors (layer norms) are the caller's to map."""
  for option, value, reason in (('use_gating', False, "UniPELT's prefix gate reads the attention's "
                                 'input, which our keys_values hook does not see'),
                                ('non_linearity', 'tanh', 'our prefix MLP uses tanh')):
    if config.get(option, value) != value:
      raise InteropError(f'{where}: {option}={config[option]!r} cannot be represented here ({reason}); '
                         f'only {option}={value!r} maps exactly.')
  model_prefix, attention, our_site = _family(model_type)
  copies = re.compile(re.escape(attention).replace(r'\{\}', r'(\d+)')
                      + rf'\.prefix_tuning\.pool\.prefix_tunings\.{re.escape(name)}\.{THEIR_LOCATION}\.')
  pool = f'prefix_tuning.prefix_tunings.{name}.'
  layers, own, rest = set(), {}, {}
  for key, value in tensors.items():
    inner = key.removeprefix(model_prefix)  # saved from the bare model (no head) it is absent
    match = copies.match(inner)
    if match:
      layers.add(int(match.group(1)))
    elif inner.startswith(pool):
      own[inner] = value
    else:
      rest[key] = value
  if not layers:
    raise InteropError(f'{where}: no per-layer copies of prefix {name!r} ({model_prefix}'
                       f'{attention.format("<i>")}.prefix_tuning.pool...), which tell the layers it is '
                       "in; save it with AdapterHub's save_adapter.")
  stacked = prefix_layout.from_adapterhub(own, name, int(config['prefix_length']))
  sites = [our_site.format(layer) for layer in sorted(layers)]
  renamed = {site_location(sites[0]): stacked.pop(THEIR_LOCATION, {})}
  leaves = prefix_layout.unstack_leaves(renamed, name, bool(config['flat']),
                                        prefix_layout.sites_by_location(sites))
  method = PrefixTuningConfig(prefix_length=int(config['prefix_length']), flat=bool(config['flat']),
                              bottleneck_size=int(config['bottleneck_size']),
                              dropout=float(config['dropout']),
                              leave_out=tuple(int(i) for i in config['leave_out']))
  return method, leaves, rest


def export_prompt(adapter: PortableAdapter, model_type: str) -> tuple[dict, dict[str, np.ndarray]]:
  """`(config, tensors with their full names)` of a prompt-tuning adapter
  (`insert_at='embeddings_output'`) for AdapterHub's BERT/RoBERTa."""
  method, name = adapter.method, adapter.name
  if method.insert_at != 'embeddings_output':
    raise InteropError(f'Prompt tuning with insert_at={method.insert_at!r} cannot be exported to '
                       f'AdapterHub: {PROMPT_PLACEMENT}')
  if model_type not in MODEL_PREFIXES:
    raise InteropError(f'Prompt tuning maps to AdapterHub on {sorted(MODEL_PREFIXES)}, not '
                       f'{model_type!r} (AdapterHub has no prompt tuning there).')
  path = f'{PROMPT_SITE}/adapters/{name}/prompt'
  if path not in adapter.leaves:
    raise InteropError(f'The prompt-tuning adapter has no leaf {path!r} (our BERT/RoBERTa embeddings\' '
                       f'output); its leaves: {sorted(adapter.adapter_leaves())}.')
  prompt = np.ascontiguousarray(adapter.leaves[path], np.float32)  # [P, d]
  config = {'architecture': 'prompt_tuning', 'prompt_length': int(method.length),
            'prompt_init': 'random_uniform', 'prompt_init_text': None, 'combine': method.combine,
            'init_weights_seed': None}
  return config, {MODEL_PREFIXES[model_type] + _PROMPT_POOL.format(name): prompt}


def import_prompt(config: dict, name: str, tensors: dict[str, np.ndarray],
                  where) -> tuple[PromptTuningConfig, dict[str, np.ndarray], dict[str, np.ndarray]]:
  """`(method, {our leaf: value}, other tensors)` of an AdapterHub prompt-tuning file: our prompt
  with `insert_at='embeddings_output'`; the other tensors are the caller's to map."""
  pool = _PROMPT_POOL.format(name)
  own = {k: v for k, v in tensors.items()
         if k == pool or any(k == prefix + pool for prefix in MODEL_PREFIXES.values())}
  if len(own) != 1:
    raise InteropError(f'{where}: expected one prompt tensor <model>.{pool}, found {sorted(own)}.')
  prompt = next(iter(own.values()))  # [P, d]
  length = int(config['prompt_length'])
  if prompt.ndim != 2 or prompt.shape[0] != length:
    raise InteropError(f'{where}: prompt_embedding {tuple(prompt.shape)} is not [prompt_length={length}, '
                       'hidden].')
  method = PromptTuningConfig(length=length, combine=config.get('combine', 'prefix'),
                              insert_at='embeddings_output')
  leaves = {f'{PROMPT_SITE}/adapters/{name}/prompt': np.ascontiguousarray(prompt, np.float32)}
  return method, leaves, {k: v for k, v in tensors.items() if k not in own}
