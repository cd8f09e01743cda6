"""A randomly initialised T5 written as a Hugging Face checkpoint directory (config.json +
safetensors with HF's tensor names + a tokenizer's files), for runs that need a T5 where no
pretrained weights can be had (offline machines, dry runs, tests of the training plumbing).

The weights are our own initialisation (`T5ForConditionalGeneration.init`) renamed to HF's names
by `ours_to_t5_name` (the inverse of `t5_import.T5_TO_OURS`); loading the directory back through
`load_t5_pretrained` checks every name and shape. The tokenizer may be any fast tokenizer: the
config's pad/EOS ids are taken from it (a BERT word-piece tokenizer: pad `[PAD]`, EOS `[SEP]`).

Example:
  write_random_t5('/tmp/t5_tiny', tokenizer_dir=resolve_checkpoint_dir('minilm-l6'),
                  d_model=64, num_layers=2)
  pre = load_pretrained('/tmp/t5_tiny')
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax.models import t5
from adapters_jax.models.hf_files import write_hf_checkpoint
from adapters_jax.models.t5_config import _HF_KEYS, T5Config

_PROJ = {'query': 'q', 'key': 'k', 'value': 'v', 'output': 'o'}


def ours_to_t5_name(path: str, config: T5Config) -> tuple[str, bool]:
  """Our `/`-path -> (HF tensor name, whether the array is transposed: kernels are)."""
  if path == 'shared/embedding':
    return 'shared.weight', False
  if path == 'lm_head/kernel':
    return 'lm_head.weight', True
  match = re.fullmatch(r'(encoder|decoder)/relative_attention_bias/embedding', path)
  if match:
    return f'{match[1]}.block.0.layer.0.SelfAttention.relative_attention_bias.weight', False
  match = re.fullmatch(r'(encoder|decoder)/final_layer_norm/scale', path)
  if match:
    return f'{match[1]}.final_layer_norm.weight', False
  match = re.fullmatch(r'(encoder|decoder)/layer_(\d+)/(\w+?)/(?:(\w+)/)?(kernel|scale)', path)
  if not match:
    raise ValueError(f'No HF T5 name for parameter {path!r}.')
  stack, block, part, proj, _ = match.groups()
  prefix = f'{stack}.block.{block}.layer'
  ffn_layer = 1 if stack == 'encoder' else 2
  if part == 'attention':
    return f'{prefix}.0.SelfAttention.{_PROJ[proj]}.weight', True
  if part == 'attention_layer_norm':
    return f'{prefix}.0.layer_norm.weight', False
  if part == 'cross_attention':
    return f'{prefix}.1.EncDecAttention.{_PROJ[proj]}.weight', True
  if part == 'cross_attention_layer_norm':
    return f'{prefix}.1.layer_norm.weight', False
  if part == 'ffn_layer_norm':
    return f'{prefix}.{ffn_layer}.layer_norm.weight', False
  if part == 'ffn':
    wi = 'wi_0' if config.is_gated else 'wi'
    name = {'intermediate': wi, 'intermediate_linear': 'wi_1', 'output': 'wo'}[proj]
    return f'{prefix}.{ffn_layer}.DenseReluDense.{name}.weight', True
  raise ValueError(f'No HF T5 name for parameter {path!r}.')


def write_random_t5(directory: str | pathlib.Path, *, tokenizer_dir: str | pathlib.Path,
                    seed: int = 0, **fields: Any) -> pathlib.Path:
  """Writes a random T5 with `fields` (T5Config fields; the vocabulary is the tokenizer's) and
  the tokenizer's files into `directory`. Returns the directory."""
  import transformers  # lazily: heavy import

  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
  eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
  if tokenizer.pad_token_id is None or eos is None:
    raise ValueError(f'The tokenizer in {tokenizer_dir} has no pad token or no EOS/SEP token; a '
                     'T5 needs both.')
  fields = {'vocab_size': len(tokenizer), 'pad_token_id': tokenizer.pad_token_id,
            'eos_token_id': eos, 'decoder_start_token_id': tokenizer.pad_token_id, **fields}
  config = T5Config(**fields)
  model = t5.T5ForConditionalGeneration(config)
  ids = jnp.zeros((1, 2), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(seed), ids, jnp.ones_like(ids), ids)['params']
  tensors = {}
  for path, value in traverse_util.flatten_dict(params, sep='/').items():
    name, transposed = ours_to_t5_name(path, config)
    value = np.asarray(value, np.float32)
    tensors[name] = np.ascontiguousarray(value.T if transposed else value)
  hf = {key: getattr(config, field) for key, field in _HF_KEYS.items()}
  hf.update({'is_encoder_decoder': True, 'architectures': ['T5ForConditionalGeneration']})
  return write_hf_checkpoint(directory, hf, tensors, tokenizer_dir)
