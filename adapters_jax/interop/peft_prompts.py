"""PEFT's prompt-learning types <-> our prompt tuning and prefix tuning.

PROMPT_TUNING (checked against peft 0.21.2 on transformers' PyTorch BERT/RoBERTa, GPT-2, Llama and
T5 v1.1):

  ours                                               PEFT
  <input_embeddings site>/adapters/<name>/prompt     `prompt_embeddings` [S * P, d], S =
    [P, d], `combine='prefix'`                       `num_transformer_submodules`
  site: `embeddings/input_embeddings` (BERT,         prepended to `inputs_embeds` (before position
    decoders), `encoder/input_embeddings` (T5)       embeddings, LayerNorm, Gemma's sqrt(d) scale);
                                                     the mask gets ones, token types 0, positions
                                                     count the prompt (as ours)
  trained head (BERT/RoBERTa)                        `base_model.classifier.*`, `modules_to_save`

For T5 (`SEQ_2_SEQ_LM`) PEFT sets S = 2 and stores P more rows, a decoder prompt, which its
PROMPT_TUNING forward and generate never read (they prepend rows [0, P) to the encoder's inputs
only): the export writes them as zeros, the import leaves them out. A prompt with
`insert_at='embeddings_output'` (AdapterHub's placement, after positions and LayerNorm) is
refused. `prefix_after_bos` (AdapterHub's other combine) has no PEFT form and is refused; so are
PEFT's P_TUNING and MULTITASK_PROMPT_TUNING
(an encoder network / per-task prompts in front of the prompt).

PREFIX_TUNING (checked against peft 0.21.2 on transformers' PyTorch BERT/RoBERTa, GPT-2, Llama
and T5 v1.1) maps our prefix tuning with `positions='after_prefix'`:

  ours                                               PEFT
  <layer l's keys_values site>/adapters/<name>/      `prompt_embeddings` [P, L * 2 * width], width =
    prefixes [P, 2 * width] (flat; a reparameter-    kv_heads * head_dim: layer l's keys in columns
    ised prefix exports its MLP folded, as           [2l * width, (2l + 1) * width), its values next
    `eject_adapter` computes it)                     (`prefix_layout`), saved so by either
                                                     `prefix_projection` (the MLP applied); the
                                                     import gives our flat form
  `positions='after_prefix'`: real tokens'           the prefix is `past_key_values`, so real
    positions + P at the `position_ids` site         tokens sit P positions later (learned
                                                     positions, RoPE; prefix keys unrotated)

T5 (`SEQ_2_SEQ_LM`): PEFT's prefix is `past_key_values` of the decoder's self-attention only (it
empties the cross-attention cache; the encoder gets none), its keys at relative positions 0..P-1
and the real queries at P+i, as ours with `positions='after_prefix'` (the `key_positions` site).
PEFT sizes it by T5's `num_layers` (the encoder's) and sets `num_transformer_submodules=2`, which
doubles the slots and hands each decoder layer four in turn: decoder layer i reads slot
2i mod num_layers (`t5_slot`); the export writes unread slots as zeros and refuses two layers
that would share a slot with different prefixes; the import reads the base's
`num_decoder_layers`. Prefixes in T5's encoder or cross-attention are refused naming them
(`PREFIX_T5_LOCATIONS`).

A prefix with `positions='none'` (AdapterHub's convention: real tokens keep their positions) gives
other logits in PEFT and is refused naming the option (`PREFIX_POSITIONS`). Refused too: gated
prefixes (UniPELT) and prefixes on only some layers (PEFT puts one in every layer).
"""

from __future__ import annotations

import pathlib
import re

import numpy as np

from adapters_jax.interop import prefix_layout
from adapters_jax.interop.naming import InteropError
from adapters_jax.interop.portable import PortableAdapter
from adapters_jax.methods import PrefixTuningConfig, PromptTuningConfig

PROMPT_TYPES = ('PROMPT_TUNING', 'PREFIX_TUNING')
REFUSED_TYPES = ('P_TUNING', 'MULTITASK_PROMPT_TUNING')
# model_type -> our keys_values site of layer {} (PEFT's prefix is in every self-attention).
PREFIX_SITES = {'bert': 'encoder/layer_{}/attention/prefix',
                'roberta': 'encoder/layer_{}/attention/prefix',
                'gpt2': 'decoder/layer_{}/attention/prefix',
                'llama': 'decoder/layer_{}/attention/prefix'}
ENCODER_DECODER_TASK = 'SEQ_2_SEQ_LM'
# PEFT keeps prompt-learning heads under `base_model.` (no `.model.`: the base is not wrapped).
PROMPT_PREFIX = 'base_model.'
PREFIX_POSITIONS = (
    "PEFT's PREFIX_TUNING passes its prefix as past_key_values, which moves every real token's "
    "position P places on; this prefix (positions='none') keeps the real tokens' positions, so the "
    "same tensors give other logits in PEFT: train with positions='after_prefix' (or export to "
    "AdapterHub, which shares the positions='none' convention).")
PREFIX_T5_SITE = 'decoder/layer_{}/attention/prefix'
PREFIX_T5_LOCATIONS = ("PEFT's T5 prefix sits in the decoder's self-attention only (it empties the "
                       'cross-attention cache and gives the encoder none); train with '
                       'encoder_prefix=False, cross_prefix=False.')


def prompt_site(encoder_decoder: bool) -> str:
  """Our input-embeddings site: T5's encoder, else the embeddings of BERT and the decoders."""
  return 'encoder/input_embeddings' if encoder_decoder else 'embeddings/input_embeddings'


def _counts(hf_config: dict | None) -> dict:
  """`num_layers`, `num_attention_heads` read as PEFT's `_prepare_prompt_learning_config` reads them
  (None when the base's config.json is not here: PEFT fills them in when it loads the adapter)."""
  if hf_config is None:
    return {'num_layers': None, 'num_attention_heads': None}
  first = lambda *keys: next((hf_config[k] for k in keys if k in hf_config), None)
  return {'num_layers': first('num_hidden_layers', 'num_layers', 'n_layer'),
          'num_attention_heads': first('num_attention_heads', 'n_head', 'num_heads')}


def export_prompt(adapter: PortableAdapter, model_type: str,
                  hf_config: dict | None) -> tuple[dict, dict[str, np.ndarray]]:
  """`(adapter_config fields, tensors)` of a prompt-tuning adapter; PEFT's shared fields (task type,
  base, head) are the caller's (`peft.export_adapter`)."""
  method = adapter.method
  if method.insert_at != 'input_embeddings':
    raise InteropError(f'Prompt tuning with insert_at={method.insert_at!r} (after the embeddings\' '
                       "positions and LayerNorm, AdapterHub's placement) has no PEFT form: PEFT puts the "
                       "prompt before them; train with insert_at='input_embeddings' (or export to "
                       'AdapterHub with --format=adapters).')
  if method.combine != 'prefix':
    raise InteropError(f"Prompt tuning with combine={method.combine!r} has no PEFT form (PEFT puts the "
                       "prompt in front of every token); train with combine='prefix'.")
  path = f'{prompt_site(model_type == "t5")}/adapters/{adapter.name}/prompt'
  if path not in adapter.leaves:
    raise InteropError(f'The prompt-tuning adapter has no leaf {path!r} (the {model_type} input '
                       f'embeddings); its leaves: {sorted(adapter.adapter_leaves())}.')
  prompt = np.asarray(adapter.leaves[path], np.float32)  # [P, d]
  submodules = 2 if model_type == 't5' else 1
  if submodules == 2:  # PEFT's decoder rows, never read by its PROMPT_TUNING forward
    prompt = np.concatenate([prompt, np.zeros_like(prompt)])
  config = {'peft_type': 'PROMPT_TUNING', 'num_virtual_tokens': int(method.length),
            'token_dim': int(prompt.shape[1]), 'num_transformer_submodules': submodules,
            'prompt_tuning_init': 'RANDOM', 'prompt_tuning_init_text': None,
            'tokenizer_name_or_path': None, 'tokenizer_kwargs': None, **_counts(hf_config)}
  return config, {'prompt_embeddings': np.ascontiguousarray(prompt)}


def import_prompt(config: dict, tensors: dict[str, np.ndarray],
                  name: str, where: pathlib.Path) -> tuple[PromptTuningConfig, dict, dict]:
  """`(method, {our leaf: value}, other tensors)` of a PEFT PROMPT_TUNING file; the other tensors
  (a head, `base_model.`-prefixed) are the caller's to map."""
  if 'prompt_embeddings' not in tensors:
    raise InteropError(f'{where}: a PROMPT_TUNING file without prompt_embeddings.')
  length, submodules = int(config['num_virtual_tokens']), int(config['num_transformer_submodules'] or 1)
  prompt = tensors['prompt_embeddings']
  if prompt.shape[0] != length * submodules:
    raise InteropError(f'{where}: prompt_embeddings has {prompt.shape[0]} rows; num_virtual_tokens='
                       f'{length} x num_transformer_submodules={submodules} = {length * submodules}.')
  encoder_decoder = config.get('task_type') == ENCODER_DECODER_TASK
  if submodules != 1 and not encoder_decoder:
    raise InteropError(f'{where}: num_transformer_submodules={submodules} on task_type '
                       f'{config.get("task_type")!r}; only a seq2seq model has a second submodule.')
  site = prompt_site(encoder_decoder)
  leaves = {f'{site}/adapters/{name}/prompt': np.ascontiguousarray(prompt[:length], np.float32)}
  rest = {k: v for k, v in tensors.items() if k != 'prompt_embeddings'}
  return PromptTuningConfig(length=length), leaves, rest


def export_prefix(adapter: PortableAdapter, model_type: str,
                  hf_config: dict | None) -> tuple[dict, dict[str, np.ndarray]]:
  """`(adapter_config fields, tensors)` of a prefix-tuning adapter (`positions='after_prefix'`) as
  PEFT's PREFIX_TUNING; PEFT's shared fields (task type, base, head) are the caller's."""
  method = adapter.method
  if method.positions != 'after_prefix':
    raise InteropError(f'Prefix tuning with positions={method.positions!r} cannot be exported to PEFT: '
                       f'{PREFIX_POSITIONS}')
  if method.use_gating:
    raise InteropError("A gated prefix (use_gating=True, UniPELT's gate) has no PEFT form; export an "
                       'ungated one.')
  if model_type not in (*PREFIX_SITES, 't5'):
    raise InteropError(f"PREFIX_TUNING maps on {sorted(PREFIX_SITES) + ['t5']}, not {model_type!r}.")
  stacked = prefix_layout.stack_leaves(adapter.adapter_leaves(), adapter.name, method.flat)
  if model_type == 't5' and set(stacked) != {'self_prefix'}:
    others = sorted(set(stacked) - {'self_prefix'})
    raise InteropError(f'The prefix has prefixes at {others}: {PREFIX_T5_LOCATIONS}')
  if len(stacked) != 1:
    raise InteropError(f"Prefix locations {sorted(stacked)}: PEFT's {model_type} has one.")
  layers = _prefix_layers(adapter.sites, PREFIX_SITES.get(model_type, PREFIX_T5_SITE), model_type)
  tensors = next(iter(stacked.values()))
  if method.flat:
    prefixes = tensors['prefixes']  # [P, L * 2 * width]
  else:  # the MLP folded, as eject_adapter does and as PEFT saves a prefix_projection
    hidden = np.tanh(tensors['embedding'] @ tensors['hidden_kernel'] + tensors['hidden_bias'])
    prefixes = hidden @ tensors['output_kernel'] + tensors['output_bias']  # [P, L * 2 * width]
  width = prefixes.shape[1] // (2 * len(layers))
  counts = _counts(hf_config)
  if hf_config is not None and 'num_key_value_heads' in hf_config:  # PEFT's grouped-query rule
    counts['num_attention_heads'] = hf_config['num_key_value_heads']
  if model_type == 't5':
    prefixes = _t5_rows(prefixes, len(layers), counts['num_layers'])
  config = {'peft_type': 'PREFIX_TUNING', 'num_virtual_tokens': int(method.prefix_length),
            'token_dim': int(width), 'encoder_hidden_size': int(width), 'prefix_projection': False,
            'num_transformer_submodules': 2 if model_type == 't5' else 1, **counts}
  return config, {'prompt_embeddings': np.ascontiguousarray(prefixes, np.float32)}


def t5_slot(layer: int, num_layers: int) -> int:
  """Which of PEFT's `num_layers` prefix slots T5's decoder layer `layer` reads: PEFT doubles the
  slots for its two submodules and hands each layer four in turn (self keys, values, cross keys,
  values), so decoder layer i reads slot 2i mod num_layers (checked on peft 0.21.2)."""
  return 2 * layer % num_layers


def _t5_rows(prefixes: np.ndarray, decoder_layers: int, num_layers: int | None) -> np.ndarray:
  """Our T5 decoder's prefixes `[P, decoder_layers * 2 * width]` laid out in PEFT's `num_layers`
  slots (T5's `num_layers`, the encoder's, as PEFT counts them): decoder layer i in slot
  `t5_slot(i)`, unread slots zeros."""
  num_layers = decoder_layers if num_layers is None else int(num_layers)
  if num_layers < decoder_layers:
    raise InteropError(f"PEFT sizes a T5 prefix by num_layers={num_layers} (the encoder's), fewer than "
                       f"the decoder's {decoder_layers} layers, so it cannot hold this prefix.")
  per_layer = prefixes.shape[1] // decoder_layers  # 2 * width: keys then values
  slots = np.zeros((prefixes.shape[0], num_layers, per_layer), prefixes.dtype)
  written: dict[int, int] = {}
  for layer in range(decoder_layers):
    slot, rows = t5_slot(layer, num_layers), prefixes[:, layer * per_layer:(layer + 1) * per_layer]
    if slot in written and not np.array_equal(slots[:, slot], rows):
      raise InteropError(f"PEFT's T5 decoder layers {written[slot]} and {layer} read one prefix (slot "
                         f'{slot} of num_layers={num_layers}); this prefix differs there, so PEFT cannot '
                         'hold it.')
    slots[:, slot], written[slot] = rows, layer
  return slots.reshape(prefixes.shape[0], num_layers * per_layer)


def _prefix_layers(sites: dict[str, str], our_site: str, model_type: str) -> list[int]:
  """The layer of each keys_values site, sorted; PEFT has a prefix in every layer."""
  layers = []
  for path, placement in sites.items():
    if placement != 'keys_values':  # the position-ids site
      continue
    match = re.fullmatch(our_site.format(r'(\d+)'), path)
    if match is None:
      raise InteropError(f'Prefix site {path!r} is not a self-attention of our {model_type} backbone '
                         f'({our_site.format("<i>")}); PEFT has no other prefix location there.')
    layers.append(int(match.group(1)))
  if not layers or sorted(layers) != list(range(len(layers))):
    raise InteropError(f'The prefix is in layers {sorted(layers)}; PEFT puts one in every layer: '
                       'train without leave_out.')
  return sorted(layers)


def import_prefix(config: dict, tensors: dict[str, np.ndarray], name: str, where: pathlib.Path,
                  base_config: dict | None = None) -> tuple[PrefixTuningConfig, dict, dict]:
  """`(method, {our leaf: value}, other tensors)` of a PEFT PREFIX_TUNING file: our flat prefix
  with `positions='after_prefix'` (T5: in the decoder's self-attention only, its first
  `num_decoder_layers` of `base_config` layers); the other tensors (a head) are the caller's."""
  if 'prompt_embeddings' not in tensors:
    raise InteropError(f'{where}: a PREFIX_TUNING file without prompt_embeddings.')
  length, layers = int(config['num_virtual_tokens']), config.get('num_layers')
  prefixes = tensors['prompt_embeddings']  # [P, L * 2 * width]
  if layers is None or prefixes.shape[0] != length or prefixes.shape[1] % (2 * int(layers)):
    raise InteropError(f'{where}: prompt_embeddings {tuple(prefixes.shape)} is not [num_virtual_tokens='
                       f'{length}, num_layers={layers} x 2 x width].')
  layers, locations = int(layers), {}
  if config.get('task_type') == ENCODER_DECODER_TASK:  # T5: the decoder reads its first layers
    our_site, locations = PREFIX_T5_SITE, {'encoder_prefix': False, 'cross_prefix': False}
    decoder_layers = int((base_config or {}).get('num_decoder_layers') or layers)
    slots = prefixes.reshape(length, layers, -1)  # [P, num_layers, 2 * width]
    prefixes = np.concatenate([slots[:, t5_slot(i, layers)] for i in range(decoder_layers)], axis=1)
    layers = decoder_layers
  else:  # a causal LM's prefix is in its decoder; BERT/RoBERTa's (SEQ_CLS, ...) in the encoder
    our_site = PREFIX_SITES['gpt2' if config.get('task_type') == 'CAUSAL_LM' else 'bert']
  sites = prefix_layout.sites_by_location(our_site.format(layer) for layer in range(layers))
  leaves = prefix_layout.unstack_leaves({location: {'prefixes': prefixes} for location in sites},
                                        name, True, sites)
  rest = {k: v for k, v in tensors.items() if k != 'prompt_embeddings'}
  method = PrefixTuningConfig(prefix_length=length, flat=True, positions='after_prefix', **locations)
  return method, leaves, rest


def refuse_import(peft_type: str, where: pathlib.Path) -> None:
  """PEFT's prompt-learning types that have no exact equivalent here, each refused in one line."""
  raise InteropError(f'{where}: peft_type {peft_type!r} has no equivalent here (it computes the prompt '
                     'with a network or per task); importable prompt learning: PROMPT_TUNING, '
                     'PREFIX_TUNING.')
