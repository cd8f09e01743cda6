"""`DecoderConfig`: the hyper-parameters of a decoder-only language model (GPT-2, Llama family).

One dataclass covers GPT-2 (learned positions, LayerNorm, GELU MLP, tied head) and the Llama
family (RoPE, RMSNorm, gated MLP, grouped-query attention) with the small differences of Qwen2
(q/k/v biases), Mistral (sliding-window attention) and Gemma (embeddings scaled by sqrt(hidden),
RMSNorm weight stored as `w - 1`, GELU-tanh gate, tied head) as switches. Every default lives
here: `HF_DEFAULTS` holds, per `model_type`, the defaults of the transformers config class, which
a `config.json` written by `save_pretrained` leaves out when a value equals them.

Example:
  cfg = DecoderConfig.from_hf_config(json.loads(path.read_text()), dtype='bfloat16')
"""

from __future__ import annotations

import dataclasses
from typing import Any

from adapters_jax.models.backbone_config import DTYPES, BackboneConfig, check_choice, check_fields
from adapters_jax.nn.activations import ACTIVATIONS

MODEL_TYPES = ('gpt2', 'llama', 'qwen2', 'mistral', 'gemma')
ROPE_TYPES = ('default', 'linear', 'dynamic', 'llama3')
NORMS = ('layer_norm', 'rms_norm')
POSITION_EMBEDDINGS = ('learned', 'rope')
MLPS = ('plain', 'gated')

# Defaults of the transformers 4.57 config classes for the keys we read (a `config.json` from
# `save_pretrained` omits values equal to these). `head_dim: None` means hidden / heads. Keys a
# family's class does not have (Qwen2's `attention_bias`, Llama's `sliding_window`) hold the
# value that family's architecture fixes.
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    'gpt2': dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 n_inner=None, activation_function='gelu_new', resid_pdrop=0.1, embd_pdrop=0.1,
                 attn_pdrop=0.1, layer_norm_epsilon=1e-5, initializer_range=0.02,
                 bos_token_id=50256, eos_token_id=50256, pad_token_id=None,
                 tie_word_embeddings=True, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False),
    'llama': dict(vocab_size=32000, max_position_embeddings=2048, hidden_size=4096,
                  intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=None, head_dim=None, hidden_act='silu',
                  initializer_range=0.02, rms_norm_eps=1e-6, rope_theta=10000.0,
                  rope_scaling=None, attention_bias=False, attention_dropout=0.0,
                  mlp_bias=False, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                  pad_token_id=None, pretraining_tp=1, sliding_window=None),
    'qwen2': dict(vocab_size=151936, max_position_embeddings=32768, hidden_size=4096,
                  intermediate_size=22016, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, head_dim=None, hidden_act='silu',
                  initializer_range=0.02, rms_norm_eps=1e-6, rope_theta=10000.0,
                  rope_scaling=None, attention_dropout=0.0, tie_word_embeddings=False,
                  use_sliding_window=False, sliding_window=None, bos_token_id=None,
                  eos_token_id=None, pad_token_id=None, attention_bias=False, mlp_bias=False),
    'mistral': dict(vocab_size=32000, max_position_embeddings=131072, hidden_size=4096,
                    intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=None, hidden_act='silu',
                    initializer_range=0.02, rms_norm_eps=1e-6, rope_theta=10000.0,
                    rope_scaling=None, attention_dropout=0.0, tie_word_embeddings=False,
                    sliding_window=4096, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                    attention_bias=False, mlp_bias=False),
    'gemma': dict(vocab_size=256000, max_position_embeddings=8192, hidden_size=3072,
                  intermediate_size=24576, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=16, head_dim=256, hidden_act='gelu_pytorch_tanh',
                  initializer_range=0.02, rms_norm_eps=1e-6, rope_theta=10000.0,
                  rope_scaling=None, attention_bias=False, attention_dropout=0.0,
                  tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                  mlp_bias=False, sliding_window=None),
}
# HF keys whose value changes the architecture: the values we implement.
_HF_REQUIRED_VALUES = {
    'gpt2': {'scale_attn_weights': (True,), 'scale_attn_by_inverse_layer_idx': (False,),
             'add_cross_attention': (False,)},
    'llama': {'pretraining_tp': (1,)},
    'qwen2': {'use_sliding_window': (False,)},
}


@dataclasses.dataclass(frozen=True)
class DecoderConfig(BackboneConfig):
  """Architecture and numerics of a pre-norm decoder-only language model.

  Defaults are a tiny Llama. Build one from a checkpoint with `DecoderConfig.from_hf_config`.

  Attributes:
    num_kv_heads: key/value heads (grouped-query attention when < num_heads).
    head_dim: per-head width; may differ from hidden / heads (Gemma).
    norm: 'layer_norm' (GPT-2) or 'rms_norm' (Llama); `norm_unit_offset` multiplies by
      `1 + w` (Gemma stores the RMSNorm weight minus one).
    position_embedding: 'learned' (GPT-2, a table of `max_position_embeddings`) or 'rope'.
    rope_type: 'default', 'linear' (positions / factor), 'dynamic' (NTK base scaled by the
      largest position of each call, as HF) or 'llama3' (wavelength-banded scaling);
      `rope_factor`, `rope_low_freq_factor`, `rope_high_freq_factor` and
      `rope_original_max_position_embeddings` are the `rope_scaling` entries they read.
    mlp: 'plain' (`output(act(intermediate(x)))`, GPT-2) or 'gated'
      (`output(act(gate(x)) * intermediate(x))`, SwiGLU / GeGLU).
    qkv_bias, attention_output_bias, mlp_bias: biases of those projections.
    scale_embeddings: multiply the token embeddings by sqrt(hidden_size) (Gemma).
    sliding_window: attend only to the last `sliding_window` positions (Mistral); None: all.
    dtype: compute dtype of the matmuls; params, norms, softmax and logits stay float32.
    remat, scan_layers: as in `EncoderConfig`; scanned params live under `decoder/layers`.
  """

  model_type: str = 'llama'
  vocab_size: int = 128
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 16
  intermediate_size: int = 128
  hidden_act: str = 'silu'
  max_position_embeddings: int = 2048
  norm: str = 'rms_norm'
  norm_eps: float = 1e-6
  norm_unit_offset: bool = False
  position_embedding: str = 'rope'
  rope_theta: float = 10000.0
  rope_type: str = 'default'
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_position_embeddings: int = 8192
  mlp: str = 'gated'
  qkv_bias: bool = False
  attention_output_bias: bool = False
  mlp_bias: bool = False
  scale_embeddings: bool = False
  tie_word_embeddings: bool = False
  sliding_window: int | None = None
  embedding_dropout: float = 0.0
  hidden_dropout: float = 0.0
  attention_dropout: float = 0.0
  initializer_range: float = 0.02
  bos_token_id: int | None = 1
  eos_token_id: int | tuple[int, ...] | None = 2
  pad_token_id: int | None = None
  dtype: str = 'float32'
  remat: bool = False
  scan_layers: bool = False

  def __post_init__(self):
    for name, valid in (('model_type', MODEL_TYPES), ('dtype', tuple(DTYPES)),
                        ('hidden_act', tuple(ACTIVATIONS)), ('rope_type', ROPE_TYPES),
                        ('norm', NORMS), ('position_embedding', POSITION_EMBEDDINGS),
                        ('mlp', MLPS)):
      check_choice(name, getattr(self, name), valid)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads={self.num_heads} is not a multiple of num_kv_heads='
                       f'{self.num_kv_heads}; grouped-query attention needs whole groups.')
    if self.position_embedding == 'rope' and self.head_dim % 2:
      raise ValueError(f'head_dim={self.head_dim} must be even for rotary embeddings.')
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f'sliding_window={self.sliding_window} must be >= 1 or None.')
    for name in ('embedding_dropout', 'hidden_dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'{name}={getattr(self, name)} must be in [0, 1).')

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """The end-of-sequence ids as a tuple (HF allows one id or a list)."""
    if self.eos_token_id is None:
      return ()
    return (self.eos_token_id,) if isinstance(self.eos_token_id, int) else self.eos_token_id

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> DecoderConfig:
    """Reads a Hugging Face `config.json` dict of a supported `model_type`, then `overrides`.

    Args:
      hf: the parsed `config.json`; absent keys take the defaults of its transformers class.
      **overrides: DecoderConfig fields, e.g. `dtype='bfloat16', scan_layers=True`.
    """
    check_fields(DecoderConfig, overrides)
    model_type = hf.get('model_type')
    if model_type not in MODEL_TYPES:
      raise ValueError(f'config.json has model_type={model_type!r}; decoders implemented: '
                       f'{list(MODEL_TYPES)}.')
    full = {**HF_DEFAULTS[model_type], **hf}
    for key, allowed in _HF_REQUIRED_VALUES.get(model_type, {}).items():
      if key in full and full[key] not in allowed:
        raise ValueError(f'config.json has {key}={full[key]!r}; this decoder implements only '
                         f'{key} in {allowed}.')
    kwargs = _gpt2_fields(full) if model_type == 'gpt2' else _llama_fields(full, model_type)
    eos = full['eos_token_id']
    kwargs.update(model_type=model_type, vocab_size=full['vocab_size'],
                  initializer_range=full['initializer_range'],
                  tie_word_embeddings=bool(full['tie_word_embeddings']),
                  bos_token_id=full['bos_token_id'], pad_token_id=full['pad_token_id'],
                  eos_token_id=tuple(eos) if isinstance(eos, list) else eos)
    kwargs.update(overrides)
    return cls(**kwargs)


def _gpt2_fields(hf: dict[str, Any]) -> dict[str, Any]:
  hidden, heads = hf['n_embd'], hf['n_head']
  return dict(
      hidden_size=hidden, num_layers=hf['n_layer'], num_heads=heads, num_kv_heads=heads,
      head_dim=hidden // heads, intermediate_size=hf['n_inner'] or 4 * hidden,
      hidden_act=hf['activation_function'], max_position_embeddings=hf['n_positions'],
      norm='layer_norm', norm_eps=hf['layer_norm_epsilon'], position_embedding='learned',
      mlp='plain', qkv_bias=True, attention_output_bias=True, mlp_bias=True,
      embedding_dropout=hf['embd_pdrop'], hidden_dropout=hf['resid_pdrop'],
      attention_dropout=hf['attn_pdrop'])


def _llama_fields(hf: dict[str, Any], model_type: str) -> dict[str, Any]:
  heads = hf['num_attention_heads']
  kv_heads = hf['num_key_value_heads'] or heads
  attention_bias = bool(hf['attention_bias'])
  fields = dict(
      hidden_size=hf['hidden_size'], num_layers=hf['num_hidden_layers'], num_heads=heads,
      num_kv_heads=kv_heads, head_dim=hf['head_dim'] or hf['hidden_size'] // heads,
      intermediate_size=hf['intermediate_size'], hidden_act=hf['hidden_act'],
      max_position_embeddings=hf['max_position_embeddings'], norm='rms_norm',
      norm_eps=hf['rms_norm_eps'], norm_unit_offset=model_type == 'gemma',
      position_embedding='rope', rope_theta=float(hf['rope_theta']), mlp='gated',
      qkv_bias=attention_bias or model_type == 'qwen2', attention_output_bias=attention_bias,
      mlp_bias=bool(hf['mlp_bias']), scale_embeddings=model_type == 'gemma',
      sliding_window=hf['sliding_window'] if model_type == 'mistral' else None,
      attention_dropout=hf['attention_dropout'])
  fields.update(_rope_scaling_fields(hf['rope_scaling'], hf['max_position_embeddings']))
  return fields


def _rope_scaling_fields(scaling: dict[str, Any] | None, max_positions: int) -> dict[str, Any]:
  """`rope_scaling` of config.json -> our `rope_*` fields; unsupported types list the valid."""
  if not scaling:
    return {}
  rope_type = scaling.get('rope_type', scaling.get('type'))
  if rope_type not in ROPE_TYPES:
    raise ValueError(f'config.json has rope_scaling type {rope_type!r}; supported: '
                     f'{list(ROPE_TYPES)}.')
  if rope_type == 'default':
    return {}
  fields = dict(rope_type=rope_type, rope_factor=float(scaling['factor']))
  if rope_type == 'llama3':
    fields.update(
        rope_low_freq_factor=float(scaling['low_freq_factor']),
        rope_high_freq_factor=float(scaling['high_freq_factor']),
        rope_original_max_position_embeddings=int(
            scaling['original_max_position_embeddings']))
  elif rope_type == 'dynamic':
    # HF's dynamic NTK scales from max_position_embeddings (see rope.inverse_frequencies).
    fields.update(rope_original_max_position_embeddings=int(max_positions))
  return fields
