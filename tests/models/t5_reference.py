"""Tiny T5 models built by transformers' PyTorch `T5ForConditionalGeneration`: the independent
reference of the T5 tests, saved as a HF checkpoint directory (config.json + safetensors)."""

import pathlib

import numpy as np
import torch
import transformers

# d_kv * num_heads (24) != d_model (32); 8 buckets with max distance 20 put positions >= 2 apart
# in the logarithmic buckets; the decoder is shallower than the encoder.
TINY_T5 = dict(vocab_size=99, d_model=32, d_kv=6, d_ff=37, num_layers=3, num_decoder_layers=2,
               num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
               dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VERSIONS = {
    'v1.0': dict(feed_forward_proj='relu', tie_word_embeddings=True),
    'v1.1': dict(feed_forward_proj='gated-gelu', tie_word_embeddings=False),
}


def torch_t5(version: str, initializer_factor: float = 1.0, seed: int = 0):
  """A random tiny T5 in eval mode; layer-norm weights drawn from U(0.5, 1.5) (HF inits them at 1,
  which would hide a norm that ignores its scale)."""
  config = transformers.T5Config(**TINY_T5, **VERSIONS[version],
                                 initializer_factor=initializer_factor)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'layer_norm' in name:
        param.uniform_(0.5, 1.5)
  return model


def save(model, directory: pathlib.Path) -> pathlib.Path:
  model.save_pretrained(str(directory), safe_serialization=True)
  assert (directory / 'model.safetensors').is_file()
  return directory


def encoder_batch(batch: int = 3, length: int = 11, seed: int = 0):
  """`(input_ids, attention_mask)` int32 `[batch, length]`; row 1 is padded after 7 tokens."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, TINY_T5['vocab_size'], (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids[1, 7:] = TINY_T5['pad_token_id']
  return ids, mask


def torch_logits(model, input_ids, attention_mask, decoder_input_ids) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.tensor(input_ids, dtype=torch.long),
                attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                decoder_input_ids=torch.tensor(decoder_input_ids, dtype=torch.long))
  return out.logits.numpy()


def torch_greedy(model, input_ids, attention_mask, max_new_tokens: int, eos_token_id) -> np.ndarray:
  """HF greedy decoding without the start token, padded to `max_new_tokens` with the pad id."""
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(input_ids, dtype=torch.long),
                         attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                         do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_token_id, pad_token_id=TINY_T5['pad_token_id']).numpy()
  out = out[:, 1:]
  pad = np.full((out.shape[0], max_new_tokens - out.shape[1]), TINY_T5['pad_token_id'])
  return np.concatenate([out, pad], axis=1)
