"""Decoder-only language model (GPT-2, Llama, Qwen2, Mistral, Gemma) in Flax Linen.

Param/module paths (`/`-joined; adapter site patterns depend on them, as on the encoder):

    embeddings/word_embeddings                 QuantizableEmbed [vocab, hidden] (also the tied LM head)
    embeddings/input_embeddings                identity site (prompt tuning may grow it)
    embeddings/position_embeddings             QuantizableEmbed, learned positions only (GPT-2)
    position_ids                               identity site on positions, before learned
                                               positions and RoPE (a prefix may shift them)
    decoder/layer_{i}/attention/{query,key,value,output}
    decoder/layer_{i}/ffn/{gate,intermediate,output}
    decoder/layer_{i}/{attention,ffn}_layer_norm
    decoder/final_layer_norm
    lm_head                                    nn.Dense hidden->vocab, untied heads only

With `config.scan_layers` the blocks are one `nn.scan`ned module `decoder/layers/...` whose params
carry a leading `[num_layers]` axis (`scan_layout.stack_layers` converts).

The model-level API a task calls:
  * `__call__(input_ids, attention_mask, positions=None, segment_ids=None)` -> logits
    `[batch, seq, vocab]` float32;
  * `hidden_states(...)` -> the final-norm output `[batch, seq, hidden]`;
  * `decode(input_ids, attention_mask, cache, positions=None)` -> `(logits, cache)`: the same
    computation with a `KVCache` (prefill and one-token steps; see `generation.generate`).
Default positions count real tokens (`cumsum(attention_mask) - 1`, plus the real tokens
already in the cache), so left-padded prompts get the positions unpadded ones would.
Packed rows (several examples per row) pass `segment_ids` `[batch, seq]` (example number within
the row) and each example's own `positions`: a token then attends only to earlier tokens of its
own segment, so each example computes what it would alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.models.decoder_config import DecoderConfig
from adapters_jax.models.decoder_layers import DecoderLayer, norm
from adapters_jax.models.input_embeddings import InputEmbeddings, grow_front
from adapters_jax.models.kv_cache import KVCache, slot_mask
from adapters_jax.models.position_ids import PositionIds
from adapters_jax.models.rope import rotary_cos_sin
from adapters_jax.nn.dropout import Dropout
from adapters_jax.quantization.embedding import QuantizableEmbed


def default_positions(attention_mask_: jax.Array, already_valid: jax.Array | None = None):
  """`[batch, seq]` int32 positions: real tokens count up from the real tokens already seen
  (`already_valid` `[batch]`, default 0); padding gets 0 (it is never attended to)."""
  mask = attention_mask_.astype(jnp.int32)
  positions = jnp.cumsum(mask, axis=-1) - 1
  if already_valid is not None:
    positions = positions + already_valid[:, None]
  return jnp.where(mask == 1, positions, 0)


class DecoderEmbeddings(nn.Module):
  """Token (x sqrt(hidden) for Gemma) + learned position embeddings; the tied head's matrix.

  `tokens` passes the token embeddings through the `input_embeddings` site
  (`models.input_embeddings`), where prompt tuning may insert vectors in front.
  """

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    self.word_embeddings = QuantizableEmbed(cfg.vocab_size, cfg.hidden_size, dtype=jnp.float32,
                                    param_dtype=jnp.float32, embedding_init=init)
    self.input_embeddings = InputEmbeddings()
    if cfg.position_embedding == 'learned':
      self.position_embeddings = QuantizableEmbed(cfg.max_position_embeddings, cfg.hidden_size,
                                          dtype=jnp.float32, param_dtype=jnp.float32,
                                          embedding_init=init)
    self.dropout = Dropout(cfg.embedding_dropout)

  def tokens(self, input_ids, starts: bool):
    """`[batch, seq', hidden]` float32; `starts` (the sequence begins here) runs the
    `input_embeddings` site, so seq' may exceed seq."""
    hidden = self.word_embeddings(input_ids)  # [batch, seq, hidden] float32
    if starts:
      hidden = self.input_embeddings(hidden)  # [batch, seq', hidden]
    if self.config.scale_embeddings:
      hidden = hidden * jnp.float32(self.config.hidden_size ** 0.5)
    return hidden

  def __call__(self, hidden, positions, deterministic: bool):
    """Token embeddings `[batch, seq, hidden]` (from `tokens`) + learned positions, dropout."""
    if self.config.position_embedding == 'learned':
      hidden = hidden + self.position_embeddings(positions)
    return self.dropout(hidden, deterministic=deterministic)

  def attend(self, hidden):
    """Tied LM head: `hidden @ word_embeddings.T` -> `[batch, seq, vocab]` float32."""
    dtype = self.config.compute_dtype
    table = self.word_embeddings.table().astype(dtype)  # [vocab, hidden], dequantised whole
    return jnp.einsum('bsh,vh->bsv', hidden.astype(dtype), table,
                      preferred_element_type=jnp.float32)


class Decoder(nn.Module):
  """The blocks (`layer_{i}`, or one scanned `layers`) and the final norm."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, hidden, mask, cos, sin, kv, cache_index, deterministic: bool):
    """`kv`: None or the cache's (keys, values) `[layers, batch, max_len, kv_heads, dim]`.

    Returns `(final-norm hidden [batch, seq, hidden] float32, new (keys, values) or None)`.
    """
    cfg = self.config
    layer_cls = DecoderLayer
    if cfg.remat:
      # argnums count `self` as 0: (self, hidden, mask, cos, sin, kv, index, deterministic).
      layer_cls = nn.remat(layer_cls, static_argnums=(7,), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(
          layer_cls, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast),
          length=cfg.num_layers)
      hidden, kv = stack(cfg, name='layers')(hidden, mask, cos, sin, kv, cache_index,
                                             deterministic)
    else:
      for i in range(cfg.num_layers):
        layer_kv = None if kv is None else (kv[0][i], kv[1][i])
        hidden, new_kv = layer_cls(cfg, name=f'layer_{i}')(
            hidden, mask, cos, sin, layer_kv, cache_index, deterministic)
        if kv is not None:
          kv = (kv[0].at[i].set(new_kv[0]), kv[1].at[i].set(new_kv[1]))
    return norm(cfg, 'final_layer_norm')(hidden), kv


class DecoderLM(nn.Module):
  """Decoder-only causal language model with an LM head (tied or not).

  Example:
    model = DecoderLM(DecoderConfig())
    params = model.init(jax.random.key(0), ids)['params']
    logits = model.apply({'params': params}, ids, mask)        # [batch, seq, vocab]
  """

  config: DecoderConfig

  def setup(self):
    cfg = self.config
    self.embeddings = DecoderEmbeddings(cfg)
    self.position_ids = PositionIds()
    self.decoder = Decoder(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
                              param_dtype=jnp.float32,
                              kernel_init=nn.initializers.normal(cfg.initializer_range))

  def __call__(self, input_ids, attention_mask=None, positions=None,
               deterministic: bool = True, segment_ids=None) -> jax.Array:
    """Logits `[batch, seq, vocab]` float32 for `input_ids` `[batch, seq]`."""
    hidden = self.hidden_states(input_ids, attention_mask, positions, deterministic, segment_ids)
    return self.logits(hidden)

  def hidden_states(self, input_ids, attention_mask=None, positions=None,
                    deterministic: bool = True, segment_ids=None) -> jax.Array:
    """The final-norm hidden states `[batch, seq, hidden]` float32 (no cache).

    `segment_ids` `[batch, seq]` int (packed rows): attention stays within equal ids. Vectors
    inserted at the `input_embeddings` site (prompt tuning, P of them) are attended to by every
    token and take positions 0..P-1; the output covers the last `seq` positions only, so
    labels and loss masks stay aligned with `input_ids`.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)  # [batch, seq]
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    tokens, attention_mask, positions = self._embed(input_ids, attention_mask, positions, True)
    length, inserted = tokens.shape[1], tokens.shape[1] - input_ids.shape[1]
    if positions is None:
      positions = default_positions(attention_mask)
    slots = jnp.arange(length, dtype=jnp.int32)
    mask = slot_mask(slots, jnp.asarray(attention_mask).astype(bool),
                     self.config.sliding_window)  # [batch, 1, seq', seq']
    if segment_ids is not None:
      segment_ids = grow_front(segment_ids, length, -1)
      # Same example, or an inserted vector: every packed example sees the prompt in front of
      # itself, at positions 0..P-1 before its own (given positions are shifted by P).
      seen = (segment_ids[:, :, None] == segment_ids[:, None, :]) | (slots < inserted)
      mask &= seen[:, None]
    hidden, _ = self._run(tokens, positions, mask, None, None, deterministic)
    return hidden[:, inserted:]

  def decode(self, input_ids, attention_mask, cache: KVCache, positions=None,
             deterministic: bool = True, last_only: bool = False) -> tuple[jax.Array, KVCache]:
    """Runs `input_ids` `[batch, s]` after the tokens already in `cache`.

    Writes their keys/values at slots `[cache.index, cache.index + s)`; returns the logits
    `[batch, s, vocab]` float32 (`[batch, 1, vocab]`, the last position's, with `last_only`:
    all a generation step reads, and a prompt's full logits can be large) and the advanced
    cache. `attention_mask` `[batch, s]` marks the real tokens (left padding of a prompt);
    `positions` default to counting real tokens. On a cache not yet `started`, vectors a method
    inserts at the `input_embeddings` site (P) take the first slots: the cache gets P more.
    """
    input_ids = jnp.asarray(input_ids, jnp.int32)
    tokens, attention_mask, positions = self._embed(input_ids, attention_mask, positions,
                                                    not cache.started)
    cache = cache.with_extra_slots(tokens.shape[1] - input_ids.shape[1])
    self._check_learned_positions(tokens.shape[1] - input_ids.shape[1], cache.max_len)
    if positions is None:
      positions = default_positions(attention_mask, jnp.sum(cache.valid, axis=1))
    cache = cache.with_valid(attention_mask)
    slots = cache.index + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    mask = slot_mask(slots, cache.valid, self.config.sliding_window)  # [b, 1, s', max_len]
    hidden, kv = self._run(tokens, positions, mask, (cache.keys, cache.values), cache.index,
                           deterministic)
    hidden = hidden[:, -1:] if last_only else hidden[:, tokens.shape[1] - input_ids.shape[1]:]
    return self.logits(hidden), cache.advanced(kv[0], kv[1], tokens.shape[1])

  def _embed(self, input_ids, attention_mask, positions, starts: bool):
    """Token embeddings `[batch, seq', hidden]` and the mask and given positions grown to seq'
    (inserted vectors: mask 1, positions 0..P-1 before the given ones shifted by P)."""
    tokens = self.embeddings.tokens(input_ids, starts)
    length = tokens.shape[1]
    inserted = length - input_ids.shape[1]
    self._check_learned_positions(inserted, length)
    attention_mask = grow_front(jnp.asarray(attention_mask), length, 1)
    if positions is not None and inserted:
      positions = jnp.asarray(positions, jnp.int32) + inserted
      front = jnp.broadcast_to(jnp.arange(inserted, dtype=jnp.int32),
                               (positions.shape[0], inserted))
      positions = jnp.concatenate([front, positions], axis=1)
    return tokens, attention_mask, positions

  def _check_learned_positions(self, inserted: int, slots: int) -> None:
    """A prompt's vectors take positions too: refuse more slots than a learned table has."""
    limit = self.config.max_position_embeddings
    if inserted and self.config.position_embedding == 'learned' and slots > limit:
      raise ValueError(f'{inserted} prompt vectors make {slots} positions, more than the {limit} '
                       'learned positions of this model; shorten the input or the prompt (or '
                       'max_new_tokens).')

  def _run(self, tokens, positions, mask, kv, cache_index, deterministic):
    positions = self.position_ids(positions)  # a site: prefix tuning may shift them
    cos = sin = None
    if self.config.position_embedding == 'rope':
      cos, sin = rotary_cos_sin(self.config, positions)  # [batch, seq, head_dim]
    hidden = self.embeddings(tokens, positions, deterministic)
    return self.decoder(hidden, mask, cos, sin, kv, cache_index, deterministic)

  def logits(self, hidden) -> jax.Array:
    """LM head on `[batch, seq, hidden]` -> `[batch, seq, vocab]` float32."""
    if self.config.tie_word_embeddings:
      return self.embeddings.attend(hidden)
    return self.lm_head(hidden).astype(jnp.float32)
