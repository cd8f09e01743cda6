"""PEFT's prompt-learning types <-> our prompt tuning; why its prefix tuning does not map.

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
only): the export writes them as zeros, the import leaves them out. `prefix_after_bos` (AdapterHub's
other combine) has no PEFT form and is refused; so are PEFT's P_TUNING and MULTITASK_PROMPT_TUNING
(an encoder network / per-task prompts in front of the prompt).

PREFIX_TUNING is refused both ways (`PREFIX_POSITIONS`): PEFT feeds its prefix as `past_key_values`,
so every real token's position moves P places on (learned positions, RoPE, T5's relative buckets),
while ours leaves the prefix without position and the real tokens where they are: the same tensors
give other logits on every backbone here. `prefix_layout` still moves the tensors for a user who
wants them.
"""

from __future__ import annotations

import pathlib

import numpy as np

from adapters_jax.interop.naming import InteropError
from adapters_jax.interop.portable import PortableAdapter
from adapters_jax.methods import PromptTuningConfig

PROMPT_TYPES = ('PROMPT_TUNING',)
REFUSED_TYPES = ('PREFIX_TUNING', 'P_TUNING', 'MULTITASK_PROMPT_TUNING')
ENCODER_DECODER_TASK = 'SEQ_2_SEQ_LM'
# PEFT keeps prompt-learning heads under `base_model.` (no `.model.`: the base is not wrapped).
PROMPT_PREFIX = 'base_model.'
PREFIX_POSITIONS = (
    "PEFT's PREFIX_TUNING passes its prefix as past_key_values, which moves every real token's "
    'position P places on; ours gives the prefix no position and keeps the real tokens\' positions, '
    'so the same tensors give other logits (use AdapterHub\'s prefix_tuning / prefix_tuning_flat, '
    'which shares our convention, or PEFT LoRA).')


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


def refuse_prefix_export() -> None:
  """Our prefix tuning never exports to PEFT (`PREFIX_POSITIONS`)."""
  raise InteropError(f'Prefix tuning cannot be exported to PEFT: {PREFIX_POSITIONS}')


def refuse_import(peft_type: str, where: pathlib.Path) -> None:
  """PEFT's prompt-learning types that have no exact equivalent here, each refused in one line."""
  if peft_type == 'PREFIX_TUNING':
    raise InteropError(f'{where}: PREFIX_TUNING cannot be imported: {PREFIX_POSITIONS}')
  raise InteropError(f'{where}: peft_type {peft_type!r} has no equivalent here (it computes the prompt '
                     'with a network or per task); importable prompt learning: PROMPT_TUNING.')
