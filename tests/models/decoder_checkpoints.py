"""Tiny transformers PyTorch decoders (the independent reference) saved as HF checkpoints.

Each family gets a tiny config; weights are random with a fixed seed and wide enough (std 0.1,
norm weights away from their init, non-zero biases) that a wrong mapping or a missing term
shows up far above the 1e-4 parity tolerance.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
import transformers

_COMMON = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=128, attn_implementation='eager')
FAMILIES = {
    'gpt2': ('GPT2Config', 'GPT2LMHeadModel',
             dict(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=64, n_inner=96,
                  attn_implementation='eager')),
    'llama': ('LlamaConfig', 'LlamaForCausalLM', dict(_COMMON, num_key_value_heads=2)),
    'qwen2': ('Qwen2Config', 'Qwen2ForCausalLM', dict(_COMMON, num_key_value_heads=2)),
    'mistral': ('MistralConfig', 'MistralForCausalLM',
                dict(_COMMON, num_key_value_heads=2, sliding_window=4)),
    'gemma': ('GemmaConfig', 'GemmaForCausalLM', dict(_COMMON, num_key_value_heads=1,
                                                      head_dim=24)),
}


def torch_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
  """A transformers PyTorch causal LM of `family`, random weights from `seed`, eval mode."""
  config_cls, model_cls, kwargs = FAMILIES[family]
  config = getattr(transformers, config_cls)(**{**kwargs, **overrides})
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config).eval()
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if 'norm' in name or '.ln_' in name:
        param.copy_((0.0 if family == 'gemma' else 1.0) + 0.3 * noise if name.endswith(
            'weight') else 0.1 * noise)
      else:
        param.copy_(0.1 * noise)
  return model


def save(model: torch.nn.Module, directory: pathlib.Path, max_shard_size: str | None = None):
  """`save_pretrained` as safetensors (sharded when `max_shard_size` is small)."""
  kwargs = {} if max_shard_size is None else {'max_shard_size': max_shard_size}
  model.save_pretrained(str(directory), safe_serialization=True, **kwargs)
  return directory


def left_padded(lengths: list[int], seq: int, vocab: int, seed: int = 0):
  """int32 `ids`, `mask` `[batch, seq]`: row i has `lengths[i]` tokens, padded on the left."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(lengths), seq)).astype(np.int32)
  mask = np.zeros_like(ids)
  for row, length in enumerate(lengths):
    mask[row, seq - length:] = 1
  ids = np.where(mask == 1, ids, 0).astype(np.int32)
  return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
  """Positions as HF `generate` computes them: `cumsum(mask) - 1`, padding set to 1."""
  positions = np.cumsum(mask, axis=-1) - 1
  return np.where(mask == 1, positions, 1)


def torch_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The reference logits `[batch, seq, vocab]` float32 with HF's left-padding positions."""
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(hf_positions(mask)).long())
  return out.logits.float().numpy()


def max_diff_at(a, b, mask) -> float:
  """Largest |a - b| over the positions where `mask` is 1."""
  return float(np.abs(np.where(np.asarray(mask)[..., None] == 1, np.asarray(a) - b, 0)).max())
