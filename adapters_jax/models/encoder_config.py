"""`EncoderConfig`: the hyper-parameters of a BERT/RoBERTa encoder, read from a HF `config.json`.

Every default lives here (STYLE 4). `from_hf_config` reads the keys of a Hugging Face
`config.json`; unknown overrides and invalid values raise errors that list the valid choices.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from adapters_jax.models.backbone_config import DTYPES, BackboneConfig, check_choice, check_fields
from adapters_jax.nn.activations import ACTIVATIONS

MODEL_TYPES = ('bert', 'roberta')
# How attention runs (see `bert.SelfAttention`): 'auto' picks 'cpu' on the CPU backend and
# 'accelerator' on GPU/TPU; either can be forced on any backend.
ATTENTION_IMPLS = ('auto', 'cpu', 'accelerator')
# HF `hidden_act` names we implement.
HIDDEN_ACTS = tuple(ACTIVATIONS)

# HF config.json key -> EncoderConfig field. Keys not listed here are metadata we ignore
# (architectures, _name_or_path, transformers_version, use_cache, ...), except those in
# `_HF_REQUIRED_VALUES`, which change the architecture and must have the value we implement.
_HF_KEYS = {
    'vocab_size': 'vocab_size',
    'hidden_size': 'hidden_size',
    'num_hidden_layers': 'num_layers',
    'num_attention_heads': 'num_heads',
    'intermediate_size': 'intermediate_size',
    'hidden_act': 'hidden_act',
    'max_position_embeddings': 'max_position_embeddings',
    'type_vocab_size': 'type_vocab_size',
    'layer_norm_eps': 'layer_norm_eps',
    'hidden_dropout_prob': 'hidden_dropout',
    'attention_probs_dropout_prob': 'attention_dropout',
    'classifier_dropout': 'classifier_dropout',
    'pad_token_id': 'pad_token_id',
    'initializer_range': 'initializer_range',
    'model_type': 'model_type',
}
# Defaults of the transformers 4.57 config classes (`BertConfig`, `RobertaConfig`) for the keys we
# read: a `config.json` may leave out every value equal to them. RoBERTa differs in its vocabulary
# (50265) and its pad id (1), which also sets where its position ids start (`position_offset`).
_BERT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, hidden_act='gelu', max_position_embeddings=512, type_vocab_size=2,
    layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    classifier_dropout=None, pad_token_id=0, initializer_range=0.02,
    position_embedding_type='absolute', is_decoder=False, add_cross_attention=False)
HF_DEFAULTS: dict[str, dict[str, Any]] = {
    'bert': _BERT_DEFAULTS,
    'roberta': {**_BERT_DEFAULTS, 'vocab_size': 50265, 'pad_token_id': 1},
}
_HF_REQUIRED_VALUES = {
    'position_embedding_type': ('absolute',),
    'is_decoder': (False,),
    'add_cross_attention': (False,),
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig(BackboneConfig):
  """Architecture and numerics of a post-LN BERT/RoBERTa encoder.

  Defaults are BERT-base (HF `BertConfig` defaults). Build one from a checkpoint with
  `EncoderConfig.from_hf_config(json.load(open('config.json')))`.

  Attributes:
    position_offset: 0 for BERT (position ids `0..L-1` regardless of padding). > 0 for
      RoBERTa: non-pad tokens count up from `position_offset` and pad tokens (`input_ids ==
      pad_token_id`) get `pad_token_id`; with `position_offset == pad_token_id + 1` this is
      exactly HF `create_position_ids_from_input_ids`.
    classifier_dropout: dropout of the task head; None means `hidden_dropout` (as in HF).
    dtype: compute dtype of the matmuls ('float32' | 'bfloat16'). Params are always float32;
      layer norms, softmax and logits are computed in float32.
    remat: rematerialise each layer in the backward pass (`nn.remat`), trading compute for
      activation memory; best with `scan_layers` (BERT-large Houlsby at 32 x 128 in bfloat16:
      0.9 instead of 9 GiB of temporaries; docs/performance.md).
    scan_layers: run the layers with `nn.scan`; params then live under `encoder/layers/...`
      with a leading `[num_layers]` axis (see `scan_layout.stack_layers`).
    attention_head_groups: compute the attention heads in this many independent groups while
      training with attention dropout (same result, different speed; see
      `attention_choice.head_groups`). 0 picks automatically: 4 on CPU (1 for more than 12 unscanned
      layers, to keep compile time down), 1 on accelerators. Used by the 'cpu' attention only.
    attention_impl: 'auto' (default: 'cpu' on the CPU backend, 'accelerator' on GPU/TPU),
      'cpu' (training-mode attention by `dropout_attention`: head groups, hand-written
      backward) or 'accelerator' (`jax.nn.dot_product_attention`, cuDNN on GPU where it
      applies; training with attention dropout runs einsum attention with the same dropout
      mask, differentiated by XLA). Same values either way; see `bert.SelfAttention`.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  classifier_dropout: float | None = None
  pad_token_id: int = 0
  position_offset: int = 0
  initializer_range: float = 0.02
  model_type: str = 'bert'
  dtype: str = 'float32'
  remat: bool = False
  scan_layers: bool = False
  attention_head_groups: int = 0
  attention_impl: str = 'auto'

  def __post_init__(self):
    check_choice('model_type', self.model_type, MODEL_TYPES)
    check_choice('dtype', self.dtype, tuple(DTYPES))
    check_choice('hidden_act', self.hidden_act, HIDDEN_ACTS)
    check_choice('attention_impl', self.attention_impl, ATTENTION_IMPLS)
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f'hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; '
          'choose num_heads dividing hidden_size.')
    for name in ('hidden_dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'{name}={getattr(self, name)} must be in [0, 1).')
    if self.attention_head_groups < 0 or (
            self.attention_head_groups and self.num_heads % self.attention_head_groups):
      raise ValueError(
          f'attention_head_groups={self.attention_head_groups} must be 0 (automatic) or '
          f'divide num_heads={self.num_heads}.')
    if self.position_offset < 0:
      raise ValueError(f'position_offset={self.position_offset} must be >= 0.')

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def head_dropout(self) -> float:
    return self.hidden_dropout if self.classifier_dropout is None else self.classifier_dropout

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], **overrides: Any) -> EncoderConfig:
    """Reads a Hugging Face `config.json` dict (BERT or RoBERTa), then applies `overrides`.

    Args:
      hf: the parsed `config.json`. Keys absent from it take the defaults of its transformers
        class (`HF_DEFAULTS`: RoBERTa's pad id is 1, so its positions start at 2).
      **overrides: EncoderConfig fields, e.g. `dtype='bfloat16', scan_layers=True`.

    Example:
      cfg = EncoderConfig.from_hf_config(json.loads(path.read_text()), dtype='bfloat16')
    """
    check_fields(EncoderConfig, overrides)
    for key, allowed in _HF_REQUIRED_VALUES.items():
      if key in hf and hf[key] not in allowed:
        raise ValueError(
            f'config.json has {key}={hf[key]!r}; this encoder implements only '
            f'{key} in {allowed}.')
    model_type = overrides.get('model_type', hf.get('model_type'))
    if model_type is None:
      raise ValueError(
          f"config.json has no 'model_type'; pass model_type= one of {MODEL_TYPES}.")
    check_choice('model_type', model_type, MODEL_TYPES)
    full = {**HF_DEFAULTS[model_type], **hf, 'model_type': model_type}
    kwargs = {field: full[key] for key, field in _HF_KEYS.items()}
    kwargs.update(overrides)
    if model_type == 'roberta' and 'position_offset' not in overrides:
      kwargs['position_offset'] = kwargs['pad_token_id'] + 1
    return cls(**kwargs)
