"""`T5Config`: the hyper-parameters of a T5 encoder-decoder (v1.0 and v1.1), read from a HF `config.json`.

Every default lives here (STYLE 4); they are those of HF `T5Config` (t5-small's shapes). v1.0
(`t5-small`, `google-t5/t5-base`): ReLU feed-forward, LM head tied to the embedding. v1.1
(`google/t5-v1_1-base`): gated-GELU feed-forward (`feed_forward_proj='gated-gelu'`), untied LM head
(`tie_word_embeddings=False`), pre-trained without dropout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from adapters_jax.models.backbone_config import DTYPES, BackboneConfig, check_choice, check_fields
from adapters_jax.nn.activations import ACTIVATIONS

# HF `feed_forward_proj` values we implement: `<act>` or `gated-<act>`.
FEED_FORWARD_PROJS = tuple(ACTIVATIONS) + tuple(f'gated-{name}' for name in ACTIVATIONS)

# HF config.json key -> T5Config field. Other keys are metadata we ignore (architectures,
# task_specific_params, use_cache, ...), except those in `_HF_REQUIRED_VALUES`.
_HF_KEYS = {
    'vocab_size': 'vocab_size',
    'd_model': 'd_model',
    'd_kv': 'd_kv',
    'd_ff': 'd_ff',
    'num_layers': 'num_layers',
    'num_decoder_layers': 'num_decoder_layers',
    'num_heads': 'num_heads',
    'relative_attention_num_buckets': 'relative_attention_num_buckets',
    'relative_attention_max_distance': 'relative_attention_max_distance',
    'dropout_rate': 'dropout_rate',
    'layer_norm_epsilon': 'layer_norm_epsilon',
    'initializer_factor': 'initializer_factor',
    'feed_forward_proj': 'feed_forward_proj',
    'tie_word_embeddings': 'tie_word_embeddings',
    'pad_token_id': 'pad_token_id',
    'eos_token_id': 'eos_token_id',
    'decoder_start_token_id': 'decoder_start_token_id',
    'model_type': 'model_type',
}
# Defaults of transformers 4.57's `T5Config` for the keys we read: a `config.json` from
# `save_pretrained` leaves out every value equal to them. None (`num_decoder_layers`,
# `decoder_start_token_id`) means: as deep as the encoder; start decoding with the pad id.
HF_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=None,
    num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj='relu',
    tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, decoder_start_token_id=None,
    model_type='t5', is_encoder_decoder=True)
_HF_REQUIRED_VALUES = {'is_encoder_decoder': (True,)}


@dataclasses.dataclass(frozen=True)
class T5Config(BackboneConfig):
  """Architecture and numerics of a T5 encoder-decoder.

  Build one from a checkpoint with `T5Config.from_hf_config(json.load(open('config.json')))`.

  Attributes:
    d_kv: width of one attention head; `num_heads * d_kv` need not equal `d_model`.
    num_decoder_layers: decoder depth (HF: None means `num_layers`; here always an int).
    relative_attention_num_buckets, relative_attention_max_distance: the relative position
      buckets (bidirectional in the encoder, causal in the decoder).
    dropout_rate: after the embeddings, on every sub-layer's output, inside the feed-forward
      block and on the attention probabilities (as HF).
    initializer_factor: scales the random init (HF's `_init_weights` convention).
    feed_forward_proj: `relu` (v1.0) or `gated-gelu` (v1.1); see `FEED_FORWARD_PROJS`.
    tie_word_embeddings: the LM head is the embedding matrix and the decoder output is scaled by
      `d_model ** -0.5` before it (v1.0); False: a separate `lm_head` (v1.1).
    eos_token_id: ends a generated row.
    decoder_start_token_id: the first decoder input (T5: the pad token).
    dtype: compute dtype of the matmuls ('float32' | 'bfloat16'). Params are float32; layer
      norms, softmax, the residual stream and logits are float32.
    remat: rematerialise each block in the backward pass (`nn.remat`).
    scan_layers: run each stack with `nn.scan`; params then live under `encoder/layers/...` and
      `decoder/layers/...` with a leading `[num_layers]` axis (see `scan_layout.stack_layers`).
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_layers: int = 6
  num_decoder_layers: int = 6
  num_heads: int = 8
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  initializer_factor: float = 1.0
  feed_forward_proj: str = 'relu'
  tie_word_embeddings: bool = True
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  model_type: str = 't5'
  dtype: str = 'float32'
  remat: bool = False
  scan_layers: bool = False

  def __post_init__(self):
    check_choice('model_type', self.model_type, ('t5',))
    check_choice('dtype', self.dtype, tuple(DTYPES))
    check_choice('feed_forward_proj', self.feed_forward_proj, FEED_FORWARD_PROJS)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'dropout_rate={self.dropout_rate} must be in [0, 1).')
    for name in ('num_layers', 'num_decoder_layers', 'num_heads', 'd_kv', 'd_model', 'd_ff'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name}={getattr(self, name)} must be >= 1.')

  @property
  def inner_dim(self) -> int:
    """Width of the concatenated attention heads, `num_heads * d_kv`."""
    return self.num_heads * self.d_kv

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith('gated-')

  @property
  def activation(self) -> str:
    """The HF activation name of the feed-forward block (`gated-gelu` means `gelu_new`, as HF)."""
    if self.feed_forward_proj == 'gated-gelu':
      return 'gelu_new'
    return self.feed_forward_proj.split('-')[-1]

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> T5Config:
    """Reads a Hugging Face T5 `config.json` dict, then applies `overrides`.

    Args:
      hf: the parsed `config.json`; keys absent from it (or None) take `HF_DEFAULTS`.
      **overrides: T5Config fields, e.g. `dtype='bfloat16', scan_layers=True`.

    Example:
      cfg = T5Config.from_hf_config(json.loads(path.read_text()), dropout_rate=0.0)
    """
    check_fields(T5Config, overrides)
    for key, allowed in _HF_REQUIRED_VALUES.items():
      if key in hf and hf[key] not in allowed:
        raise ValueError(f'config.json has {key}={hf[key]!r}; this T5 implements only '
                         f'{key} in {allowed}.')
    full = {**HF_DEFAULTS, **{k: v for k, v in hf.items() if v is not None}}
    kwargs = {field: full[key] for key, field in _HF_KEYS.items()}
    if kwargs['num_decoder_layers'] is None:  # HF: None means as deep as the encoder
      kwargs['num_decoder_layers'] = kwargs['num_layers']
    if kwargs['decoder_start_token_id'] is None:  # T5 starts decoding with the pad token
      kwargs['decoder_start_token_id'] = kwargs['pad_token_id']
    kwargs.update(overrides)
    return cls(**kwargs)
