"""Jit-compiled autoregressive generation with a KV cache: greedy or sampled, EOS per row.

`generate` runs the prompt once (prefill, filling the cache), then one token per step inside a
`lax.while_loop` that stops when every row has produced an end-of-sequence token or
`max_new_tokens` are out. Prompts are left-padded (`attention_mask` 0 on the left); positions
count real tokens only, so a padded row generates what it would alone. The model is a
`DecoderLM` or a `Spliced` one wrapping it (adapters run through `Spliced.apply(...,
method='decode')`, `active=` picks them). Compiled once per (model, config, shapes).

Sampling follows HF's processors, in HF's order: temperature, then top-k, then top-p (keep the
most likely tokens whose probabilities first reach `top_p`), then a categorical draw with key
`fold_in(rng, step)`, so a fixed key reproduces the same tokens.

Example:
  out = generate(pre.model, pre.params, ids, mask, GenerationConfig(max_new_tokens=20))
  out.tokens   # [batch, 20] int32, pad_token_id after each row's EOS
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax.models.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """How to generate; every default here.

  Attributes:
    max_new_tokens: tokens generated per row at most.
    do_sample: False = greedy (argmax); True = sample with the fields below.
    temperature: logits are divided by it before top-k/top-p (> 0).
    top_k: keep only the k most likely tokens; 0 = off.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p;
      1.0 = off.
    eos_token_ids: a row stops after producing any of these; () = never stops early.
    pad_token_id: written after a row's EOS.
  """

  max_new_tokens: int = 32
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0

  @classmethod
  def for_model(cls, config: Any, **overrides: Any) -> GenerationConfig:
    """Stops at the model's EOS ids and pads with its pad id (else its first EOS id, else 0),
    as HF `generate` does; `overrides` set any field.

    Example: `GenerationConfig.for_model(pre.config, max_new_tokens=20, do_sample=True)`.
    """
    eos = tuple(config.eos_token_ids)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos or (0,))[0]
    return cls(**{'eos_token_ids': eos, 'pad_token_id': pad, **overrides})

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f'max_new_tokens={self.max_new_tokens} must be >= 1.')
    if self.temperature <= 0:
      raise ValueError(f'temperature={self.temperature} must be > 0; for greedy decoding '
                       'set do_sample=False.')
    if self.top_k < 0:
      raise ValueError(f'top_k={self.top_k} must be >= 0 (0 = off).')
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f'top_p={self.top_p} must be in (0, 1] (1.0 = off).')


@dataclasses.dataclass(frozen=True)
class GenerationOutput:
  """`tokens` `[batch, max_new_tokens]` int32 (pad after EOS); `lengths` `[batch]` int32, the
  generated tokens of each row including its EOS."""

  tokens: jax.Array
  lengths: jax.Array


jax.tree_util.register_dataclass(GenerationOutput, data_fields=['tokens', 'lengths'],
                                 meta_fields=[])


def filter_logits(logits: jax.Array, config: GenerationConfig) -> jax.Array:
  """Sampling logits `[batch, vocab]` float32: / temperature, then -inf outside top-k/top-p."""
  logits = logits.astype(jnp.float32) / config.temperature
  if 0 < config.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, config.top_k)[0][:, -1:]  # [batch, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if config.top_p < 1.0:
    ordered = -jnp.sort(-logits, axis=-1)  # [batch, vocab], descending
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
    kept = jnp.where(mass_before < config.top_p, ordered, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)  # smallest kept logit; the top always kept
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def next_token(logits: jax.Array, rng: jax.Array, config: GenerationConfig) -> jax.Array:
  """Picks one token per row from `logits` `[batch, vocab]` -> `[batch]` int32."""
  if not config.do_sample:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, config), axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Runner:
  """The model call `generate` makes: a plain `DecoderLM`, or a spliced one with `active`."""

  model: Any
  active: Any = None

  @property
  def host(self) -> nn.Module:
    return self.model if isinstance(self.model, nn.Module) else self.model.model

  @property
  def model_config(self) -> Any:
    return self.host.config

  def decode(self, params, input_ids, attention_mask, cache):
    if isinstance(self.model, nn.Module):
      return self.model.apply({'params': params}, input_ids, attention_mask, cache,
                              method='decode', last_only=True)
    return self.model.apply(params, input_ids, attention_mask, cache, active=self.active,
                            method='decode', last_only=True)


def generate(model: Any, params: dict[str, Any], input_ids, attention_mask=None,
             config: GenerationConfig = GenerationConfig(), rng: jax.Array | None = None, *,
             active: Any = None) -> GenerationOutput:
  """Generates up to `config.max_new_tokens` tokens after each left-padded prompt.

  Args:
    model: a `DecoderLM`, or a `Spliced` wrapping one (then `active` names the adapters).
    params: the model's params (with adapters grafted in for a spliced model).
    input_ids: `[batch, prompt_len]` int, left-padded.
    attention_mask: `[batch, prompt_len]`, 1 on real tokens; default all ones.
    config: greedy or sampling settings, EOS and pad ids.
    rng: PRNG key; required when `config.do_sample`.
    active: adapters to run (see `Spliced.apply`); only with a spliced model.

  Returns:
    GenerationOutput(tokens [batch, max_new_tokens], lengths [batch]).
  """
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  _check_left_padded(attention_mask)
  if config.do_sample and rng is None:
    raise ValueError('config.do_sample=True needs rng=, a jax.random key.')
  if active is not None and isinstance(model, nn.Module):
    raise ValueError('active= needs a Spliced model (add_adapter returns one); a plain '
                     'DecoderLM has no adapters.')
  runner = _Runner(model, active)
  _check_length(runner.host.config, input_ids.shape[1] + config.max_new_tokens - 1)
  rng = jax.random.key(0) if rng is None else rng
  return _generate(runner, params, input_ids, jnp.asarray(attention_mask, jnp.int32), rng,
                   config)


def _check_length(model_config: Any, length: int) -> None:
  """Learned position tables end at `max_position_embeddings`: refuse longer sequences."""
  if model_config.position_embedding == 'learned' and length > model_config.max_position_embeddings:
    raise ValueError(
        f'prompt length + max_new_tokens - 1 = {length} exceeds the '
        f'{model_config.max_position_embeddings} learned positions of this model; shorten '
        'the prompt or lower max_new_tokens.')


def _check_left_padded(attention_mask) -> None:
  """Raises when a concrete mask has a row ending in padding (traced masks are not checked)."""
  try:
    last = np.asarray(attention_mask)[:, -1]
  except jax.errors.TracerArrayConversionError:
    return
  if not last.all():
    raise ValueError(
        f'Prompts must be left-padded: rows {np.flatnonzero(last == 0).tolist()} end with '
        "padding. Tokenize with padding_side='left' (load_decoder's tokenizer does).")


@dataclasses.dataclass(frozen=True)
class _DecodeRunner:
  """A model call given as a function: `decode(params, ids, mask, cache) -> (logits, cache)`."""

  decode: Any
  model_config: Any


def generate_traced(decode: Any, model_config: Any, params: dict[str, Any], input_ids,
                    attention_mask, config: GenerationConfig,
                    rng: jax.Array | None = None) -> GenerationOutput:
  """`generate` inside a computation that is already being jitted (e.g. an evaluation step).

  Args:
    decode: `(params, ids [b, s], mask [b, s], cache) -> (logits [b, 1, vocab], cache)`, the
      model's `decode` with `last_only=True` (with adapters: through `Spliced.apply`).
    model_config: the `DecoderConfig` (cache shapes, position limit).
    params, input_ids, attention_mask, config, rng: as in `generate` (prompts left-padded).
  """
  _check_length(model_config, input_ids.shape[1] + config.max_new_tokens - 1)
  rng = jax.random.key(0) if rng is None else rng
  return _generate_loop(_DecodeRunner(decode, model_config), params,
                        jnp.asarray(input_ids, jnp.int32),
                        jnp.asarray(attention_mask, jnp.int32), rng, config)


def _generate_loop(runner: Any, params, input_ids, attention_mask, rng,
                   config: GenerationConfig) -> GenerationOutput:
  batch, prompt_len = input_ids.shape
  steps = config.max_new_tokens
  eos = jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)
  cache = KVCache.empty(runner.model_config, batch, prompt_len + steps - 1)
  logits, cache = runner.decode(params, input_ids, attention_mask, cache)
  token = next_token(logits[:, -1], jax.random.fold_in(rng, 0), config)  # [batch]
  tokens = jnp.full((batch, steps), config.pad_token_id, jnp.int32).at[:, 0].set(token)
  done = jnp.isin(token, eos)
  lengths = jnp.ones((batch,), jnp.int32)

  def unfinished(state):
    step, _, _, done, _, _ = state
    return (step < steps) & ~jnp.all(done)

  def one_step(state):
    step, token, tokens, done, lengths, cache = state
    ones = jnp.ones((batch, 1), jnp.int32)
    logits, cache = runner.decode(params, token[:, None], ones, cache)
    chosen = next_token(logits[:, -1], jax.random.fold_in(rng, step), config)
    chosen = jnp.where(done, config.pad_token_id, chosen)
    tokens = tokens.at[:, step].set(chosen)
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(chosen, eos)
    return step + 1, chosen, tokens, done, lengths, cache

  state = (jnp.int32(1), token, tokens, done, lengths, cache)
  _, _, tokens, _, lengths, _ = jax.lax.while_loop(unfinished, one_step, state)
  return GenerationOutput(tokens=tokens, lengths=lengths)


_generate = jax.jit(_generate_loop, static_argnames=('runner', 'config'))
