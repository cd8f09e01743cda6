"""BERT/RoBERTa encoder in Flax Linen, written so adapters can be spliced in by module path.

Param/module paths (`/`-joined; adapter site regexes elsewhere depend on them):

    embeddings/{word,position,token_type}_embeddings   QuantizableEmbed (token_type absent if 0 types)
    embeddings/input_embeddings                        identity site (prompt tuning may grow it)
    embeddings/position_ids                            identity site on position ids (a prefix may shift them)
    embeddings/layer_norm                              nn.LayerNorm
    embeddings/embeddings_output                       identity site on the embeddings' output (may grow)
    encoder/layer_{i}/attention/{query,key,value}      nn.Dense hidden->hidden
    encoder/layer_{i}/attention/output                 nn.Dense hidden->hidden
    encoder/layer_{i}/attention/prefix                 KeyValueHook (keys, values, mask, input; no params)
    encoder/layer_{i}/attention_layer_norm             nn.LayerNorm  LN(x + drop(attention(x)))
    encoder/layer_{i}/ffn/intermediate                 nn.Dense hidden->intermediate (+ act)
    encoder/layer_{i}/ffn/output                       nn.Dense intermediate->hidden
    encoder/layer_{i}/ffn_layer_norm                   nn.LayerNorm  LN(x + drop(ffn(x)))
    pooler/dense                                       nn.Dense + tanh on the first token
    classifier/...                                     task head (see heads.py)

With `config.scan_layers` the layers are one `nn.scan`ned module `encoder/layers/...` whose params
carry a leading `[num_layers]` axis; names inside the layer are unchanged.

Every projection is its own `nn.Dense` called through `Module.__call__` (no fused QKV), so a
`nn.intercept_methods` interceptor can replace/add to any output or rescale any input.

Attention follows the backend (`config.attention_impl`; see `SelfAttention`): on GPU/TPU
`jax.nn.dot_product_attention` (cuDNN where it applies) and, when training with attention
dropout, einsum attention differentiated by XLA; on CPU a hand-written backward in head groups.

`BertForSequenceClassification` runs its last layer for position 0 only (`first_token_only`):
both heads read nothing else, so the logits are those of the full computation with ~1/5 of the
last layer's work (keys/values still see every position). `encode()` returns every position. A
spliced adapter that reads every position of its input (UniPELT's gates) turns it off
(`MethodConfig.reads_every_position`).

Speed on CPU (docs/performance.md): dropout masks come from a counter-based hash
(`dropout_keep_mask`), not threefry `bernoulli` (~16% of a train step before), the exact
GELU is the erf formula with a hand-written derivative (`gelu_exact`), and training-mode
attention runs in independent head groups (`head_groups`) that XLA spreads over the cores.
The hash masks serve every backend, so a run draws the same dropout on CPU, GPU and TPU.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.models.attention_choice import attention_implementation, fused_kernel, head_groups
from adapters_jax.models.dropout_attention import dropout_attention, einsum_dropout_attention
from adapters_jax.models.encoder_config import EncoderConfig
from adapters_jax.models.heads import BertClassificationHead, RobertaClassificationHead
from adapters_jax.models.input_embeddings import InputEmbeddings, grow_front
from adapters_jax.models.position_ids import PositionIds
from adapters_jax.nn.activations import get_activation
from adapters_jax.nn.dropout import Dropout
from adapters_jax.nn.key_value_hook import KeyValueHook
from adapters_jax.quantization.embedding import QuantizableEmbed

HEADS = ('bert', 'roberta')


def _dense(config: EncoderConfig, features: int, name: str) -> nn.Dense:
  return nn.Dense(
      features, dtype=config.compute_dtype, param_dtype=jnp.float32, name=name,
      kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: EncoderConfig, name: str) -> nn.LayerNorm:
  # float32 compute whatever the matmul dtype; the residual stream stays float32.
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def position_ids_for(input_ids: jax.Array, config: EncoderConfig) -> jax.Array:
  """Position ids `[batch, seq]` int32: BERT `0..L-1`; RoBERTa as HF (pads get pad_token_id)."""
  seq_len = input_ids.shape[-1]
  if config.position_offset == 0:
    return jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), input_ids.shape)
  not_pad = (input_ids != config.pad_token_id).astype(jnp.int32)  # [batch, seq]
  positions = jnp.cumsum(not_pad, axis=-1) * not_pad
  return jnp.where(not_pad == 1, positions + config.position_offset - 1, config.pad_token_id)


class Embeddings(nn.Module):
  """Word + position (+ token type) embeddings, then LayerNorm and dropout.

  The word embeddings pass the `input_embeddings` site (`models.input_embeddings`), whose output
  may be longer than `input_ids` (prompt tuning): the mask, token types and positions grow with it.
  The output passes the `embeddings_output` site, which may grow it too (prompt tuning with
  `insert_at='embeddings_output'`, AdapterHub's): then only the mask grows, the inserted vectors
  get no position, token type, LayerNorm or dropout.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, attention_mask, deterministic: bool):
    """Returns `(hidden [batch, seq', hidden], attention_mask [batch, seq'])`, seq' >= seq."""
    cfg = self.config
    embed = functools.partial(
        QuantizableEmbed, features=cfg.hidden_size, dtype=jnp.float32, param_dtype=jnp.float32,
        embedding_init=nn.initializers.normal(cfg.initializer_range))
    hidden = embed(cfg.vocab_size, name='word_embeddings')(input_ids)  # [batch, seq, hidden]
    hidden = InputEmbeddings(name='input_embeddings')(hidden)  # [batch, seq', hidden]
    length = hidden.shape[1]
    attention_mask = grow_front(attention_mask, length, 1)
    # Inserted vectors count as tokens for RoBERTa's positions: any id but the pad id.
    position_ids = position_ids_for(grow_front(input_ids, length, cfg.pad_token_id + 1), cfg)
    position_ids = PositionIds(name='position_ids')(position_ids)  # a site: may shift them
    hidden = hidden + embed(cfg.max_position_embeddings,
                            name='position_embeddings')(position_ids)
    if cfg.type_vocab_size > 0:
      token_type_ids = grow_front(token_type_ids, length, 0)
      hidden = hidden + embed(cfg.type_vocab_size,
                              name='token_type_embeddings')(token_type_ids)
    hidden = _layer_norm(cfg, 'layer_norm')(hidden)
    hidden = Dropout(cfg.hidden_dropout)(hidden, deterministic=deterministic)
    hidden = InputEmbeddings(name='embeddings_output')(hidden)  # [batch, seq'', hidden]
    return hidden, grow_front(attention_mask, hidden.shape[1], 1)


class SelfAttention(nn.Module):
  """Multi-head self-attention; returns the output projection `[batch, seq, hidden]`.

  `mask` is boolean, broadcastable to `[batch, heads, q_len, k_len]`, True = attend (the
  encoder passes `[batch, 1, 1, seq]`). Keys, values and mask pass through the `prefix` hook
  (`adapters_jax.nn.key_value_hook`), where prefix tuning prepends its keys and values.

  What runs (`attention_implementation(config)`):
    eval, or `attention_dropout == 0`: `jax.nn.dot_product_attention`; with the 'accelerator'
      implementation on a GPU, cuDNN's fused kernel where it applies (`fused_kernel`).
    training with attention dropout, 'cpu': `dropout_attention` in `head_groups(config)`
      groups, hand-written backward.
    training with attention dropout, 'accelerator': `einsum_dropout_attention`, one batched
      einsum over all heads, differentiated by XLA (jax's fused attention takes no dropout).
  Both training forms apply one keep-mask `[batch, heads, q_len, k_len]` from the 'dropout'
  stream, so they give the same values for the same key.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, mask, deterministic: bool, query_hidden=None):
    """`hidden` [batch, seq, hidden] gives keys and values; `query_hidden` [batch, q_len,
    hidden] (default: `hidden`) the queries. Returns `[batch, q_len, hidden]`."""
    cfg = self.config
    query_hidden = hidden if query_hidden is None else query_hidden
    batch, q_len = query_hidden.shape[:2]
    split = lambda x: x.reshape(x.shape[0], x.shape[1], cfg.num_heads, cfg.head_dim)
    query = split(_dense(cfg, cfg.hidden_size, 'query')(query_hidden))  # [b, q_len, heads, dim]
    key = split(_dense(cfg, cfg.hidden_size, 'key')(hidden))  # [batch, seq, heads, dim]
    value = split(_dense(cfg, cfg.hidden_size, 'value')(hidden))
    # k_len may grow; `hidden` is the attention's input (the prefix gate reads it; with
    # first_token_only the queries see position 0 only, the gate still every position).
    key, value, mask = KeyValueHook(name='prefix')(key, value, mask, hidden)
    implementation = attention_implementation(cfg)
    if cfg.attention_dropout > 0.0 and not deterministic:
      dropout = Dropout(cfg.attention_dropout)
      keep = dropout.keep_mask((batch, cfg.num_heads, q_len, key.shape[1]))
      if implementation == 'cpu':
        context = dropout_attention(query, key, value, mask, keep, cfg.attention_dropout,
                                    head_groups(cfg))
      else:
        context = einsum_dropout_attention(query, key, value, mask, keep, cfg.attention_dropout)
    else:
      kernel = 'xla'
      if implementation == 'accelerator':
        kernel = fused_kernel(jax.default_backend(), query.dtype, cfg.head_dim)
      context = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                             implementation=kernel)
    context = context.reshape(batch, q_len, cfg.hidden_size)  # [batch, q_len, hidden]
    return _dense(cfg, cfg.hidden_size, 'output')(context)


class FeedForward(nn.Module):
  """`output(act(intermediate(hidden)))`, before the residual; `[batch, seq, hidden]`."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, deterministic: bool):
    cfg = self.config
    inner = _dense(cfg, cfg.intermediate_size, 'intermediate')(hidden)  # [b, s, inter]
    inner = get_activation(cfg.hidden_act)(inner)
    return _dense(cfg, cfg.hidden_size, 'output')(inner)


class EncoderLayer(nn.Module):
  """Post-LN transformer layer. `scanned=True` returns `(hidden, None)` for `nn.scan`.

  `first_token_only=True` computes the layer's output for position 0 only (`[batch, 1,
  hidden]`; keys and values still come from every position): all a classification head reads
  from the last layer, for about 4/5 less of that layer's work.
  """

  config: EncoderConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, hidden, mask, deterministic: bool, first_token_only: bool = False):
    cfg = self.config
    residual = hidden[:, :1] if first_token_only else hidden  # [batch, q_len, hidden]
    attended = SelfAttention(cfg, name='attention')(hidden, mask, deterministic,
                                                   query_hidden=residual)
    attended = Dropout(cfg.hidden_dropout)(attended, deterministic=deterministic)
    hidden = _layer_norm(cfg, 'attention_layer_norm')(residual + attended)
    transformed = FeedForward(cfg, name='ffn')(hidden, deterministic)
    transformed = Dropout(cfg.hidden_dropout)(transformed, deterministic=deterministic)
    hidden = _layer_norm(cfg, 'ffn_layer_norm')(hidden + transformed)  # [b, q_len, hidden]
    return (hidden, None) if self.scanned else hidden


class Encoder(nn.Module):
  """The layer stack: `layer_{i}` submodules, or one scanned `layers` module.

  `first_token_only=True` returns `[batch, 1, hidden]`, position 0 of the last layer; unscanned,
  the last layer computes only that position (scanned layers share one body, so they compute
  every position and slice).
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, mask, deterministic: bool, first_token_only: bool = False):
    cfg = self.config
    layer_cls = EncoderLayer
    if cfg.remat:
      # argnums count `self` as 0: (self, hidden, mask, deterministic[, first_token_only]).
      static = (3,) if cfg.scan_layers else (3, 4)
      layer_cls = nn.remat(layer_cls, static_argnums=static, prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(
          layer_cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast, nn.broadcast), length=cfg.num_layers)
      hidden, _ = stack(cfg, scanned=True, name='layers')(hidden, mask, deterministic)
      return hidden[:, :1] if first_token_only else hidden
    for i in range(cfg.num_layers):
      last = i == cfg.num_layers - 1
      hidden = layer_cls(cfg, name=f'layer_{i}')(hidden, mask, deterministic,
                                                 first_token_only and last)
    return hidden


class Pooler(nn.Module):
  """`tanh(dense(hidden[:, 0]))` -> `[batch, hidden]`."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden):
    return jnp.tanh(_dense(self.config, self.config.hidden_size, 'dense')(hidden[:, 0]))


@dataclasses.dataclass(frozen=True)
class EncoderOutput:
  """Output of `BertEncoderModel`."""

  last_hidden_state: jax.Array  # [batch, seq, hidden], float32
  pooled: jax.Array | None      # [batch, hidden], float32; None without a pooler


jax.tree_util.register_dataclass(
    EncoderOutput, data_fields=['last_hidden_state', 'pooled'], meta_fields=[])


class BertEncoderModel(nn.Module):
  """BERT/RoBERTa encoder: `embeddings`, `encoder`, optional `pooler` at the param root.

  Example:
    model = BertEncoderModel(EncoderConfig(num_layers=2, hidden_size=64, num_heads=4))
    params = model.init(jax.random.key(0), ids)['params']
    out = model.apply({'params': params}, ids, mask)  # out.last_hidden_state [b, s, h]
  """

  config: EncoderConfig
  add_pooler: bool = True

  def setup(self):
    self.embeddings = Embeddings(self.config)
    self.encoder = Encoder(self.config)
    if self.add_pooler:
      self.pooler = Pooler(self.config)

  def encode(self, input_ids, attention_mask=None, token_type_ids=None,
             deterministic: bool = True, first_token_only: bool = False) -> jax.Array:
    """Returns the last hidden state `[batch, seq, hidden]` float32 (`[batch, 1, hidden]`,
    position 0 only, with `first_token_only`: what a classification head reads); with a prompt
    spliced at `embeddings/input_embeddings`, seq includes its P positions."""
    input_ids = jnp.asarray(input_ids, jnp.int32)  # [batch, seq]
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    hidden, attention_mask = self.embeddings(input_ids, token_type_ids, attention_mask,
                                             deterministic)
    mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]  # [batch, 1, 1, seq']
    hidden = self.encoder(hidden, mask, deterministic, first_token_only)
    return hidden.astype(jnp.float32)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
               deterministic: bool = True) -> EncoderOutput:
    hidden = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
    pooled = self.pooler(hidden).astype(jnp.float32) if self.add_pooler else None
    return EncoderOutput(last_hidden_state=hidden, pooled=pooled)


class BertForSequenceClassification(BertEncoderModel):
  """Encoder + `classifier` head at the root; returns logits `[batch, num_labels]` float32.

  head='bert': dropout + `classifier/dense` on the pooled output (HF
  BertForSequenceClassification). head='roberta': `classifier/dense` + tanh +
  `classifier/out_proj` on the first token (HF RobertaForSequenceClassification), no pooler.
  Regression is `num_labels=1`.
  """

  num_labels: int = 2
  head: str = 'bert'

  def setup(self):
    if self.head not in HEADS:
      raise ValueError(f'head={self.head!r} is not supported; valid heads: {list(HEADS)}.')
    if self.add_pooler != (self.head == 'bert'):
      raise ValueError(f"head={self.head!r} needs add_pooler={self.head == 'bert'}.")
    super().setup()
    head_cls = BertClassificationHead if self.head == 'bert' else RobertaClassificationHead
    self.classifier = head_cls(self.num_labels, self.config.head_dropout,
                               self.config.initializer_range)

  def head_features(self, input_ids, attention_mask=None, token_type_ids=None,
                    deterministic: bool = True, first_token_only: bool = True) -> jax.Array:
    """The head's input `[batch, hidden]` float32: pooled (BERT) or the first token (RoBERTa).

    Both heads read position 0 only, so by default the last layer computes only that
    position; `first_token_only=False` computes every position (same values, more work).
    """
    hidden = self.encode(input_ids, attention_mask, token_type_ids, deterministic,
                         first_token_only=first_token_only)  # [batch, 1 or seq, hidden]
    features = self.pooler(hidden) if self.add_pooler else hidden[:, 0]  # [batch, hidden]
    return features.astype(jnp.float32)

  def __call__(self, input_ids, attention_mask=None, token_type_ids=None,
               deterministic: bool = True) -> jax.Array:
    features = self.head_features(input_ids, attention_mask, token_type_ids, deterministic)
    return self.classifier(features, deterministic)


def classification_model(config: EncoderConfig, num_labels: int) -> BertForSequenceClassification:
  """The HF-compatible classification model for `config.model_type` (BERT or RoBERTa head)."""
  head = 'roberta' if config.model_type == 'roberta' else 'bert'
  return BertForSequenceClassification(config, add_pooler=head == 'bert',
                                       num_labels=num_labels, head=head)
