"""Greedy decoding for T5 with a key/value cache: encode once, then one cached decoder step per token.

The model is reached only through an `apply` function with the signature of `Spliced.apply`
(`apply(params, *args, method=..., **kwargs)`), so the same decoding runs the base model
(`plain_apply(model)`) or a model with adapters active
(`functools.partial(spliced.apply, active='my_adapter')`). The loop is a `lax.while_loop`
inside one jit-compiled function; it stops when every row has produced EOS.

Example:
  generate = make_greedy_generate(functools.partial(spliced.apply, active='sst2'), config)
  tokens = generate(params, input_ids, attention_mask, max_new_tokens=8)  # [batch, 8]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.models.t5 import init_decode_cache
from adapters_jax.models.t5_config import T5Config

ApplyFn = Callable[..., Any]


def plain_apply(model: nn.Module) -> ApplyFn:
  """`apply(params, *args, method=, **kwargs)` for a model without adapters."""
  return lambda params, *args, **kwargs: model.apply({'params': params}, *args, **kwargs)


def greedy_generate(apply: ApplyFn, config: T5Config, params, input_ids, attention_mask,
                    max_new_tokens: int) -> jax.Array:
  """Greedy (argmax) decoding with the cache, as HF `generate(do_sample=False, num_beams=1)`.

  Args:
    apply: runs a method of `T5ForConditionalGeneration` (see the module docstring).
    config: the model's config (start, EOS and pad ids; cache shapes).
    params: the model's params (with adapters grafted, if `apply` activates some).
    input_ids: `[batch, src_len]` int.
    attention_mask: `[batch, src_len]`, 1 = token.
    max_new_tokens: how many tokens to generate at most (static).

  Returns:
    `[batch, max_new_tokens]` int32: the generated tokens without the start token; a row that
    produced EOS holds `pad_token_id` after it (as HF pads finished rows).
  """
  batch = input_ids.shape[0]
  encoder_hidden = apply(params, input_ids, attention_mask, method='encode')
  cache = init_decode_cache(config, batch, max_new_tokens)
  start = jnp.full((batch, 1), config.decoder_start_token_id, jnp.int32)
  # The first step also fills the cross-attention keys/values into the cache.
  logits, cache = apply(params, start, 0, cache, encoder_hidden, attention_mask,
                        method='decode_step')
  token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)  # [batch]
  tokens = jnp.full((batch, max_new_tokens), config.pad_token_id, jnp.int32)
  tokens = tokens.at[:, 0].set(token)
  done = token == config.eos_token_id  # [batch]

  def keep_going(state):
    step, _, done, _ = state
    return (step < max_new_tokens) & ~jnp.all(done)

  def one_step(state):
    step, tokens, done, cache = state
    previous = jax.lax.dynamic_slice_in_dim(tokens, step - 1, 1, axis=1)  # [batch, 1]
    logits, cache = apply(params, previous, step, cache, encoder_hidden, attention_mask,
                          method='decode_step')
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    token = jnp.where(done, config.pad_token_id, token)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, None], step, axis=1)
    return step + 1, tokens, done | (token == config.eos_token_id), cache

  _, tokens, _, _ = jax.lax.while_loop(keep_going, one_step,
                                       (jnp.int32(1), tokens, done, cache))
  return tokens


def make_greedy_generate(apply: ApplyFn, config: T5Config):
  """`generate(params, input_ids, attention_mask, max_new_tokens)`, jit-compiled once per shape
  and `max_new_tokens`."""
  return jax.jit(functools.partial(greedy_generate, apply, config),
                 static_argnames=('max_new_tokens',))
