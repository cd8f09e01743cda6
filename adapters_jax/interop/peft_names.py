"""Our sites <-> the module names PEFT gives them in transformers' PyTorch models, per family.

  family                      our site (under the stack)          transformers module
  bert, roberta               encoder/layer_<i>/attention/query   bert.encoder.layer.<i>.attention.self.query
                              (`naming.SITE_TO_HF`)               (`roberta.` for RoBERTa)
  llama, qwen2, mistral,      decoder/layer_<i>/attention/query   model.layers.<i>.self_attn.q_proj
  gemma                       .../attention/{key,value,output}    ...self_attn.{k,v,o}_proj
                              .../ffn/{gate,intermediate,output}  ...mlp.{gate,up,down}_proj
  gpt2 (Conv1D modules,       decoder/layer_<i>/attention/query   transformer.h.<i>.attn.c_attn, part 0
  `fan_in_fan_out`)           .../attention/{key,value}           the same module, parts 1 and 2
                              .../attention/output                transformer.h.<i>.attn.c_proj
                              .../ffn/{intermediate,output}       transformer.h.<i>.mlp.{c_fc,c_proj}
  t5                          {encoder,decoder}/layer_<i>/        {encoder,decoder}.block.<i>.layer.0.
                                attention/{query,...,output}        SelfAttention.{q,k,v,o}
                              decoder/layer_<i>/cross_attention/  decoder.block.<i>.layer.1.EncDecAttention.
                              .../ffn/{intermediate,              ...layer.<1 enc, 2 dec>.DenseReluDense.
                                intermediate_linear,output}         {wi (wi_0 when gated), wi_1, wo}

GPT-2 fuses query, key and value into one module whose output is `[query | key | value]`
(`decoder_import.split_fused_qkv` splits it on load); `Module.part` says which third a site is.
"""

from __future__ import annotations

import dataclasses
import re

from adapters_jax.interop.naming import HF_TO_SITE, MODEL_PREFIXES, InteropError, site_to_hf
from adapters_jax.models.decoder_config import MODEL_TYPES as DECODER_MODEL_TYPES

ENCODER_MODEL_TYPES = tuple(MODEL_PREFIXES)
MODEL_TYPES = (*ENCODER_MODEL_TYPES, *DECODER_MODEL_TYPES, 't5')
FUSED_PARTS = ('query', 'key', 'value')  # GPT-2 `c_attn` output order

_LLAMA = {'attention/query': 'self_attn.q_proj', 'attention/key': 'self_attn.k_proj',
          'attention/value': 'self_attn.v_proj', 'attention/output': 'self_attn.o_proj',
          'ffn/gate': 'mlp.gate_proj', 'ffn/intermediate': 'mlp.up_proj', 'ffn/output': 'mlp.down_proj'}
_GPT2 = {'attention/query': 'attn.c_attn', 'attention/key': 'attn.c_attn', 'attention/value': 'attn.c_attn',
         'attention/output': 'attn.c_proj', 'ffn/intermediate': 'mlp.c_fc', 'ffn/output': 'mlp.c_proj'}
_T5_ATTENTION = {'query': 'q', 'key': 'k', 'value': 'v', 'output': 'o'}
_T5_FFN = {'intermediate_linear': 'wi_1', 'output': 'wo'}
_OUR_SITE = re.compile(r'^(encoder|decoder)/layer_(\d+)/(.+)$')


@dataclasses.dataclass(frozen=True)
class Module:
  """One transformers module as PEFT names it (without `base_model.model.`).

  Attributes:
    name: e.g. `model.layers.0.self_attn.q_proj`.
    part: for GPT-2's fused `c_attn`, the index of the site's third in `FUSED_PARTS`; else None.
  """

  name: str
  part: int | None = None


def task_type(model_type: str, *, has_head: bool) -> str:
  """PEFT's `task_type` (which `AutoPeftModelFor...` class opens the export): T5 -> SEQ_2_SEQ_LM,
  decoders -> CAUSAL_LM, encoders -> SEQ_CLS with a classification head, else FEATURE_EXTRACTION."""
  if model_type == 't5':
    return 'SEQ_2_SEQ_LM'
  if model_type in DECODER_MODEL_TYPES:
    return 'CAUSAL_LM'
  return 'SEQ_CLS' if has_head else 'FEATURE_EXTRACTION'


def locate_site(path: str) -> tuple[str, int, str]:
  """`decoder/layer_3/ffn/output` -> `('decoder', 3, 'ffn/output')`; refuses other paths."""
  match = _OUR_SITE.match(path)
  if not match:
    raise InteropError(f'Site {path!r} is not inside a layer of our backbones (`encoder/layer_<i>/...`, '
                       '`decoder/layer_<i>/...`); scanned layers (`layers`) and other hosts do not map.')
  return match.group(1), int(match.group(2)), match.group(3)


def site_to_module(path: str, model_type: str, *, gated_t5: bool = False) -> Module:
  """Our site path -> the transformers module PEFT adapts for it (`gated_t5`: T5 v1.1's `wi_0`)."""
  if model_type in ENCODER_MODEL_TYPES:
    return Module(MODEL_PREFIXES[model_type] + site_to_hf(path))
  stack, layer, inner = locate_site(path)
  name = None
  if model_type == 't5':
    kind, _, leaf = inner.partition('/')
    ffn = dict(_T5_FFN, intermediate='wi_0' if gated_t5 else 'wi')
    if kind in ('attention', 'cross_attention') and leaf in _T5_ATTENTION:
      if kind == 'attention' or stack == 'decoder':
        sub = 'layer.0.SelfAttention' if kind == 'attention' else 'layer.1.EncDecAttention'
        name = f'{stack}.block.{layer}.{sub}.{_T5_ATTENTION[leaf]}'
    elif kind == 'ffn' and leaf in ffn:
      name = f'{stack}.block.{layer}.layer.{1 if stack == "encoder" else 2}.DenseReluDense.{ffn[leaf]}'
  elif model_type == 'gpt2':
    if stack == 'decoder' and inner in _GPT2:
      part = FUSED_PARTS.index(inner.split('/')[1]) if _GPT2[inner] == 'attn.c_attn' else None
      return Module(f'transformer.h.{layer}.{_GPT2[inner]}', part)
  elif stack == 'decoder' and model_type in DECODER_MODEL_TYPES and inner in _LLAMA:
    name = f'model.layers.{layer}.{_LLAMA[inner]}'
  if name is None:
    raise InteropError(f'Site {path!r} is no single module PEFT adapts in transformers\' {model_type}; '
                       'sites that map: attention query/key/value/output and the FFN projections.')
  return Module(name)


def module_to_sites(module: str, model_type: str) -> tuple[str, ...]:
  """A transformers module (PEFT's name, without `base_model.model.`) -> our site paths: one, or
  the three of GPT-2's `c_attn` in `FUSED_PARTS` order; () for a module with no site here."""
  if model_type in ENCODER_MODEL_TYPES:
    match = re.match(r'^(?:(?:bert|roberta)\.)?encoder\.layer\.(\d+)\.(.+)$', module)
    if match and match.group(2) in HF_TO_SITE:
      return (f'encoder/layer_{match.group(1)}/{HF_TO_SITE[match.group(2)]}',)
    return ()
  if model_type == 't5':
    match = re.match(r'^(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.(\w+)\.(\w+)$', module)
    if not match:
      return ()
    stack, layer, index, block, leaf = match.groups()
    stem = f'{stack}/layer_{layer}'
    attention = {v: k for k, v in _T5_ATTENTION.items()}
    if (block, index) == ('SelfAttention', '0') and leaf in attention:
      return (f'{stem}/attention/{attention[leaf]}',)
    if (block, index, stack) == ('EncDecAttention', '1', 'decoder') and leaf in attention:
      return (f'{stem}/cross_attention/{attention[leaf]}',)
    ffn = {'wi': 'intermediate', 'wi_0': 'intermediate', 'wi_1': 'intermediate_linear', 'wo': 'output'}
    if block == 'DenseReluDense' and index == ('1' if stack == 'encoder' else '2') and leaf in ffn:
      return (f'{stem}/ffn/{ffn[leaf]}',)
    return ()
  table, pattern = (_GPT2, r'^transformer\.h\.(\d+)\.(.+)$') if model_type == 'gpt2' else (
      _LLAMA, r'^model\.layers\.(\d+)\.(.+)$')
  match = re.match(pattern, module)
  if not match:
    return ()
  return tuple(f'decoder/layer_{match.group(1)}/{ours}' for ours, hf in table.items() if hf == match.group(2))
