"""T5 (v1.0 and v1.1) encoder-decoder in Flax Linen, named so adapters splice in by module path.

Param/module paths (`/`-joined; the site patterns of `adapters_jax.splicing.sites` depend on them):

    shared/embedding                                       [vocab, d_model], both stacks' input
    encoder/input_embeddings                               identity site (prompt tuning may grow it)
    {encoder,decoder}/key_positions                        identity site on the relative bias's key
                                                           positions [k_len]; a prefix puts its own in front
    {encoder,decoder}/relative_attention_bias/embedding    [buckets, heads] (HF: block 0's)
    {encoder,decoder}/layer_{i}/attention_layer_norm/scale
    {encoder,decoder}/layer_{i}/attention/{query,key,value,output}/kernel
    decoder/layer_{i}/cross_attention_layer_norm/scale
    decoder/layer_{i}/cross_attention/{query,key,value,output}/kernel
    {encoder,decoder}/layer_{i}/ffn_layer_norm/scale
    {encoder,decoder}/layer_{i}/ffn/{intermediate,intermediate_linear,output}/kernel
    {encoder,decoder}/final_layer_norm/scale
    lm_head/kernel                                         untied LM head (v1.1) only

With `config.scan_layers` each stack's blocks are one `nn.scan`ned module `layers` whose params
carry a leading `[num_layers]` axis (`scan_layout.stack_layers` converts).

Blocks are pre-norm: `x + dropout(sublayer(rms_norm(x)))`. The relative position bias is
computed once per stack and shared by its blocks, bidirectional in the encoder and causal in the
decoder; cross-attention has none. With tied embeddings (v1.0) the decoder output is scaled by
`d_model ** -0.5` before the LM head, as HF does.

API for a task kind: `__call__` (teacher forcing -> logits `[batch, tgt_len, vocab]`),
`encode`, `decode`, and the cached `decode_step` that `t5_decoding.greedy_generate` drives.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.models.input_embeddings import InputEmbeddings, grow_front
from adapters_jax.models.position_ids import PositionIds
from adapters_jax.models.t5_config import T5Config
from adapters_jax.models.t5_layers import Attention, FeedForward, RelativePositionBias, T5LayerNorm
from adapters_jax.nn.dropout import Dropout
from adapters_jax.quantization.embedding import QuantizableEmbed

# Keys of the decoding cache; each value has a leading `[num_decoder_layers]` axis.
SELF_CACHE = ('self_key', 'self_value')      # [layers, batch, max_length, heads, d_kv]
CROSS_CACHE = ('cross_key', 'cross_value')   # [layers, batch, src_len, heads, d_kv]


def _norm(config: T5Config, name: str) -> T5LayerNorm:
  return T5LayerNorm(config.layer_norm_epsilon, name=name)


class EncoderBlock(nn.Module):
  """Self-attention then feed-forward. `scanned=True` returns `(hidden, None)` for `nn.scan`."""

  config: T5Config
  scanned: bool = False

  @nn.compact
  def __call__(self, hidden, bias, mask, deterministic: bool):
    """`hidden` [batch, seq, d_model] float32, `bias` [1, heads, seq, seq], `mask` [batch, 1, 1,
    seq] bool -> `[batch, seq, d_model]` float32."""
    cfg = self.config
    drop = Dropout(cfg.dropout_rate)
    attention = Attention(cfg, name='attention')
    normed = _norm(cfg, 'attention_layer_norm')(hidden)
    key, value = attention.key_value(normed)
    attended = attention(normed, key, value, bias, mask, deterministic)
    hidden = hidden + drop(attended, deterministic).astype(jnp.float32)
    normed = _norm(cfg, 'ffn_layer_norm')(hidden)
    transformed = FeedForward(cfg, name='ffn')(normed, deterministic)
    hidden = hidden + drop(transformed, deterministic).astype(jnp.float32)
    return (hidden, None) if self.scanned else hidden


class DecoderBlock(nn.Module):
  """Causal self-attention, cross-attention over the encoder output, feed-forward.

  With `cache` (this block's slice of the decoding cache) the new keys/values are written at
  `position` and the queries attend over the whole cache; the cross-attention keys/values are
  read from it when present, else computed and returned in it. Returns `(hidden, cache)`.
  """

  config: T5Config

  @nn.compact
  def __call__(self, hidden, cache, encoder_hidden, encoder_mask, self_bias, self_mask, position,
               deterministic: bool):
    cfg = self.config
    drop = Dropout(cfg.dropout_rate)
    new_cache = None if cache is None else dict(cache)
    attention = Attention(cfg, name='attention')
    normed = _norm(cfg, 'attention_layer_norm')(hidden)  # [batch, q_len, d_model]
    key, value = attention.key_value(normed)  # [batch, q_len, heads, d_kv]
    if cache is not None:
      write = lambda buffer, new: jax.lax.dynamic_update_slice_in_dim(
          buffer, new.astype(buffer.dtype), position, axis=1)
      key = write(cache['self_key'], key)  # [batch, max_length, heads, d_kv]
      value = write(cache['self_value'], value)
      new_cache.update(self_key=key, self_value=value)
    attended = attention(normed, key, value, self_bias, self_mask, deterministic)
    hidden = hidden + drop(attended, deterministic).astype(jnp.float32)

    cross = Attention(cfg, name='cross_attention')
    normed = _norm(cfg, 'cross_attention_layer_norm')(hidden)
    if cache is not None and 'cross_key' in cache:
      key, value = cache['cross_key'], cache['cross_value']
    else:
      key, value = cross.key_value(encoder_hidden)  # [batch, src_len, heads, d_kv]
      if cache is not None:
        new_cache.update(cross_key=key, cross_value=value)
    attended = cross(normed, key, value, None, encoder_mask, deterministic)
    hidden = hidden + drop(attended, deterministic).astype(jnp.float32)

    normed = _norm(cfg, 'ffn_layer_norm')(hidden)
    transformed = FeedForward(cfg, name='ffn')(normed, deterministic)
    hidden = hidden + drop(transformed, deterministic).astype(jnp.float32)
    return hidden, new_cache


class Encoder(nn.Module):
  """Bidirectional stack: `layer_{i}` blocks (or one scanned `layers`), then the final norm."""

  config: T5Config

  @nn.compact
  def __call__(self, hidden, attention_mask, deterministic: bool):
    """`hidden` [batch, seq, d_model] embedded tokens, `attention_mask` [batch, seq] (1 = token)
    -> `[batch, seq', d_model]` float32; seq' > seq when a method inserts vectors at the
    `input_embeddings` site (prompt tuning: the mask grows with them, and the decoder's
    cross-attention grows its mask to the encoder output's length)."""
    cfg = self.config
    hidden = InputEmbeddings(name='input_embeddings')(hidden)  # [batch, seq', d_model]
    attention_mask = grow_front(attention_mask, hidden.shape[1], 1)
    positions = jnp.arange(hidden.shape[1], dtype=jnp.int32)
    # A site: a prefix puts its keys' positions in front; the queries move as many places on.
    key_positions = PositionIds(name='key_positions')(positions)  # [seq'] (seq + P after a prefix)
    query_positions = positions + (key_positions.shape[0] - positions.shape[0])
    bias = RelativePositionBias(cfg, bidirectional=True, name='relative_attention_bias')(
        query_positions, key_positions)  # [1, heads, seq, seq']
    mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]  # [batch, 1, 1, seq]
    hidden = Dropout(cfg.dropout_rate)(hidden, deterministic)
    block = EncoderBlock
    if cfg.remat:  # argnums count `self` as 0: (self, hidden, bias, mask, deterministic)
      block = nn.remat(block, static_argnums=(4,), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_layers)
      hidden, _ = stack(cfg, scanned=True, name='layers')(hidden, bias, mask, deterministic)
    else:
      for i in range(cfg.num_layers):
        hidden = block(cfg, name=f'layer_{i}')(hidden, bias, mask, deterministic)
    hidden = _norm(cfg, 'final_layer_norm')(hidden)
    return Dropout(cfg.dropout_rate)(hidden, deterministic)


class Decoder(nn.Module):
  """Causal stack with cross-attention: `layer_{i}` blocks (or scanned `layers`), final norm."""

  config: T5Config

  @nn.compact
  def __call__(self, hidden, encoder_hidden, encoder_mask, decoder_mask, deterministic: bool,
               cache=None, position=None):
    """Teacher forcing (`cache=None`) or cached steps.

    Args:
      hidden: `[batch, q_len, d_model]` embedded decoder inputs.
      encoder_hidden: `[batch, src_len, d_model]` encoder output.
      encoder_mask: `[batch, src_len]`, 1 = token.
      decoder_mask: `[batch, q_len]` (1 = token) or None; teacher forcing only.
      deterministic: no dropout.
      cache: None, or the decoding cache (`SELF_CACHE` keys, plus `CROSS_CACHE` after the first
        step); the inputs sit at positions `position .. position + q_len - 1`.
      position: int32 scalar, the position of the first input when `cache` is given.

    Returns:
      `(hidden [batch, q_len, d_model] float32, cache or None)`.
    """
    cfg = self.config
    q_len = hidden.shape[1]
    if cache is None:
      query_positions = jnp.arange(q_len, dtype=jnp.int32)
      key_positions = query_positions
    else:
      if decoder_mask is not None:
        raise ValueError('decoder_mask is for teacher forcing; cached steps attend to every '
                         'earlier position.')
      query_positions = position + jnp.arange(q_len, dtype=jnp.int32)
      key_positions = jnp.arange(cache['self_key'].shape[2], dtype=jnp.int32)
    self_mask = (key_positions[None, :] <= query_positions[:, None])[None, None]  # [1,1,q,k]
    # A site: a prefix puts its keys' positions in front; the queries move as many places on.
    bias_key_positions = PositionIds(name='key_positions')(key_positions)  # [k_len (+ P)]
    query_positions = query_positions + (bias_key_positions.shape[0] - key_positions.shape[0])
    key_positions = bias_key_positions
    self_bias = RelativePositionBias(cfg, bidirectional=False, name='relative_attention_bias')(
        query_positions, key_positions)  # [1, heads, q_len, k_len'] (k_len + P after a prefix)
    if decoder_mask is not None:
      self_mask = self_mask & jnp.asarray(decoder_mask).astype(bool)[:, None, None, :]
    # Inserted encoder positions (prompt tuning) are always attended to.
    encoder_mask = grow_front(encoder_mask, encoder_hidden.shape[1], 1)
    cross_mask = jnp.asarray(encoder_mask).astype(bool)[:, None, None, :]  # [batch, 1, 1, src]
    hidden = Dropout(cfg.dropout_rate)(hidden, deterministic)
    block = DecoderBlock
    if cfg.remat:  # (self, hidden, cache, enc, enc_mask, bias, mask, position, deterministic)
      block = nn.remat(block, static_argnums=(8,), prevent_cse=not cfg.scan_layers)
    shared = (encoder_hidden, cross_mask, self_bias, self_mask, position, deterministic)
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0},
                      split_rngs={'params': True, 'dropout': True},
                      in_axes=(0,) + (nn.broadcast,) * 6, length=cfg.num_decoder_layers)
      hidden, cache = stack(cfg, name='layers')(hidden, cache, *shared)
    else:
      slices = []
      for i in range(cfg.num_decoder_layers):
        layer_cache = None if cache is None else {k: v[i] for k, v in cache.items()}
        hidden, layer_cache = block(cfg, name=f'layer_{i}')(hidden, layer_cache, *shared)
        slices.append(layer_cache)
      if cache is not None:
        cache = {k: jnp.stack([s[k] for s in slices]) for k in slices[0]}
    hidden = _norm(cfg, 'final_layer_norm')(hidden)
    return Dropout(cfg.dropout_rate)(hidden, deterministic), cache


class T5ForConditionalGeneration(nn.Module):
  """T5 encoder-decoder with its LM head; logits are float32.

  Example:
    model = T5ForConditionalGeneration(T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=64,
                                                num_layers=2, num_decoder_layers=2, num_heads=4))
    params = model.init(jax.random.key(0), ids, mask, decoder_ids)['params']
    logits = model.apply({'params': params}, ids, mask, decoder_ids)  # [batch, tgt, vocab]
  """

  config: T5Config

  def setup(self):
    cfg = self.config
    self.shared = QuantizableEmbed(cfg.vocab_size, cfg.d_model, dtype=jnp.float32,
                           param_dtype=jnp.float32,
                           embedding_init=nn.initializers.normal(cfg.initializer_factor))
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                              param_dtype=jnp.float32,
                              kernel_init=nn.initializers.normal(cfg.initializer_factor))

  def encode(self, input_ids, attention_mask=None, deterministic: bool = True) -> jax.Array:
    """`input_ids` [batch, src_len] -> encoder output `[batch, src_len, d_model]` float32."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    return self.encoder(self.shared(input_ids), attention_mask, deterministic)

  def _logits(self, hidden):
    """Decoder output `[batch, len, d_model]` -> logits `[batch, len, vocab]` float32."""
    cfg = self.config
    if not cfg.tie_word_embeddings:
      return self.lm_head(hidden).astype(jnp.float32)
    hidden = hidden * cfg.d_model ** -0.5
    embedding = self.shared.table().astype(cfg.compute_dtype)  # [vocab, d_model], dequantised whole
    return jnp.einsum('bld,vd->blv', hidden.astype(cfg.compute_dtype), embedding,
                      preferred_element_type=jnp.float32)

  def decode(self, decoder_input_ids, encoder_hidden, attention_mask=None,
             decoder_attention_mask=None, deterministic: bool = True) -> jax.Array:
    """Teacher forcing: `decoder_input_ids` [batch, tgt_len] over `encoder_hidden` [batch,
    src_len, d_model] (padding given by `attention_mask` [batch, src_len]) -> logits `[batch,
    tgt_len, vocab]` float32."""
    decoder_input_ids = jnp.asarray(decoder_input_ids, jnp.int32)
    if attention_mask is None:
      attention_mask = jnp.ones(encoder_hidden.shape[:2], jnp.int32)
    hidden, _ = self.decoder(self.shared(decoder_input_ids), encoder_hidden, attention_mask,
                             decoder_attention_mask, deterministic)
    return self._logits(hidden)

  def decode_step(self, token_ids, position, cache, encoder_hidden, attention_mask,
                  deterministic: bool = True):
    """One cached step: `token_ids` [batch, q_len] at positions `position ..` -> `(logits [batch,
    q_len, vocab] float32, cache)`. The first step (cache without `CROSS_CACHE`) also computes
    and returns the cross-attention keys/values of `encoder_hidden`. Decoding is inference:
    `deterministic` (taken so every method has the same calling convention) must be True."""
    if not deterministic:
      raise ValueError('decode_step runs without dropout; call it with deterministic=True.')
    token_ids = jnp.asarray(token_ids, jnp.int32)
    position = jnp.asarray(position, jnp.int32)
    hidden, cache = self.decoder(self.shared(token_ids), encoder_hidden, attention_mask, None,
                                 True, cache, position)
    return self._logits(hidden), cache

  def __call__(self, input_ids, attention_mask=None, decoder_input_ids=None,
               decoder_attention_mask=None, deterministic: bool = True) -> jax.Array:
    """Teacher forcing: logits `[batch, tgt_len, vocab]` float32 for `decoder_input_ids` (make
    them from labels with `shift_right`)."""
    if decoder_input_ids is None:
      raise ValueError('T5 needs decoder_input_ids; make them from the labels with '
                       't5.shift_right(labels, config).')
    encoder_hidden = self.encode(input_ids, attention_mask, deterministic)
    return self.decode(decoder_input_ids, encoder_hidden, attention_mask, decoder_attention_mask,
                       deterministic)


def shift_right(labels, config: T5Config) -> jax.Array:
  """Decoder inputs for teacher forcing: `[start] + labels[:-1]`, with -100 (ignored) -> pad."""
  labels = jnp.asarray(labels, jnp.int32)  # [batch, tgt_len]
  start = jnp.full((labels.shape[0], 1), config.decoder_start_token_id, jnp.int32)
  shifted = jnp.concatenate([start, labels[:, :-1]], axis=1)
  return jnp.where(shifted == -100, config.pad_token_id, shifted)


def init_decode_cache(config: T5Config, batch_size: int, max_length: int) -> dict[str, jax.Array]:
  """An empty decoding cache for `max_length` decoder positions (`SELF_CACHE` keys, zeros)."""
  shape = (config.num_decoder_layers, batch_size, max_length, config.num_heads, config.d_kv)
  return {k: jnp.zeros(shape, config.compute_dtype) for k in SELF_CACHE}
