"""Jit-compiled beam search with a KV cache, as transformers' `generate(num_beams=...)` does it.

The semantics are those of transformers 4.57's vectorised `_beam_search` (`early_stopping=False`):
each step scores every (beam, token) continuation by its summed log-probability, keeps the best
`2 * num_beams`, moves the best `num_beams` that did not end (EOS or the last step) on as running
beams, and offers those among the first `num_beams` candidates that did end to the finished set
with score `sum_logprobs / generated_length ** length_penalty`; the search stops when no running
beam can beat the worst finished one by HF's heuristic (its best score divided by the current
generated length), when every candidate ends, or after `max_new_tokens`. `no_repeat_ngram_size`
bans, per beam, every token that would repeat an n-gram of the whole sequence (prompt, left
padding included, as HF sees it). The result is the best finished hypothesis of each row.

Example:
  out = beam_search(pre.model, pre.params, ids, mask,
                    BeamSearchConfig(num_beams=10, max_new_tokens=64, length_penalty=0.8,
                                     no_repeat_ngram_size=4, eos_token_ids=(50256,)))
  out.tokens   # [batch, 64] int32, pad_token_id after each row's end
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from adapters_jax.models.generation import (
  GenerationOutput,
  _check_left_padded,
  _check_length,
  _DecodeRunner,
  _Runner,
)
from adapters_jax.models.kv_cache import KVCache

_NEG = -1.0e9  # HF's "impossible" score


@dataclasses.dataclass(frozen=True)
class BeamSearchConfig:
  """How to beam-search; every default here (HF's defaults, except `num_beams`).

  Attributes:
    num_beams: beams per row (>= 1).
    max_new_tokens: tokens generated per row at most.
    length_penalty: finished scores are divided by `generated_length ** length_penalty`.
    no_repeat_ngram_size: ban repeating any n-gram of this size; 0 = off.
    eos_token_ids: a hypothesis ends with any of these.
    pad_token_id: written after a hypothesis' end.
  """

  num_beams: int = 4
  max_new_tokens: int = 32
  length_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0

  def __post_init__(self):
    if self.num_beams < 1 or self.max_new_tokens < 1 or self.no_repeat_ngram_size < 0:
      raise ValueError(f'num_beams={self.num_beams} and max_new_tokens={self.max_new_tokens} '
                       f'must be >= 1, no_repeat_ngram_size={self.no_repeat_ngram_size} >= 0.')


def beam_search(model: Any, params: dict[str, Any], input_ids, attention_mask=None,
                config: BeamSearchConfig = BeamSearchConfig(), *,
                active: Any = None) -> GenerationOutput:
  """The best beam-search hypothesis after each left-padded prompt (`model`, `params`, `active`
  as in `generation.generate`). Returns `GenerationOutput(tokens [B, max_new_tokens], lengths)`."""
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if attention_mask is None:
    attention_mask = jnp.ones_like(input_ids)
  _check_left_padded(attention_mask)
  runner = _Runner(model, active)
  _check_length(runner.model_config, input_ids.shape[1] + config.max_new_tokens - 1)
  return _beam_search_jit(runner, params, input_ids, jnp.asarray(attention_mask, jnp.int32),
                          config)


def beam_search_traced(decode: Any, model_config: Any, params, input_ids, attention_mask,
                       config: BeamSearchConfig) -> GenerationOutput:
  """`beam_search` inside an already-jitted computation (see `generation.generate_traced`)."""
  _check_length(model_config, input_ids.shape[1] + config.max_new_tokens - 1)
  return _beam_search_loop(_DecodeRunner(decode, model_config), params,
                           jnp.asarray(input_ids, jnp.int32),
                           jnp.asarray(attention_mask, jnp.int32), config)


def _banned_ngrams(sequence: jax.Array, length: jax.Array, n: int, vocab: int) -> jax.Array:
  """Bool `[rows, vocab]`: tokens that would complete an n-gram already in `sequence[:, :length]`.

  `sequence` `[rows, L]`; `length` the (traced) number of valid tokens, equal for every row.
  """
  rows, total = sequence.shape
  starts = jnp.arange(total - n + 1)  # [S]
  windows = jnp.stack([sequence[:, i:i + total - n + 1] for i in range(n)], axis=-1)  # [r, S, n]
  tail = jax.lax.dynamic_slice_in_dim(sequence, length - (n - 1), n - 1, axis=1)  # [rows, n-1]
  match = jnp.all(windows[:, :, :n - 1] == tail[:, None, :], axis=-1)  # [rows, S]
  match &= (starts <= length - n)[None, :] & (length >= n - 1)
  banned = jnp.zeros((rows, vocab), bool)
  return banned.at[jnp.arange(rows)[:, None], windows[:, :, n - 1]].max(match)


def _reorder(cache: KVCache, rows: jax.Array) -> KVCache:
  """The cache with its batch rows taken from `rows` `[batch * beams]`."""
  return dataclasses.replace(cache, keys=cache.keys[:, rows], values=cache.values[:, rows],
                             valid=cache.valid[rows])


def _beam_search_loop(runner: Any, params, input_ids, attention_mask,
                      config: BeamSearchConfig) -> GenerationOutput:
  batch, prompt_len = input_ids.shape
  beams, steps = config.num_beams, config.max_new_tokens
  keep = max(2, 1 + len(config.eos_token_ids)) * beams  # candidates per step, as HF
  eos = jnp.asarray(config.eos_token_ids or (-1,), jnp.int32)
  flat_ids = jnp.repeat(input_ids, beams, axis=0)  # [B*K, P]
  flat_mask = jnp.repeat(attention_mask, beams, axis=0)
  # One slot more than greedy: the loop also runs the last chosen token (its logits unused).
  cache = KVCache.empty(runner.model_config, batch * beams, prompt_len + steps)
  logits, cache = runner.decode(params, flat_ids, flat_mask, cache)
  vocab = logits.shape[-1]
  offsets = (jnp.arange(batch) * beams)[:, None]  # [B, 1]
  top_mask = jnp.arange(keep) < beams  # [2K]: candidates that may finish

  def step_fn(state):
    (t, logits, cache, run_tokens, run_scores, fin_tokens, fin_scores, fin_lengths, fin_flags,
     unsatisfied, _) = state
    log_probs = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)  # [B*K, V]
    if config.no_repeat_ngram_size:
      full = jnp.concatenate([flat_ids, run_tokens.reshape(batch * beams, steps)], axis=1)
      banned = _banned_ngrams(full, prompt_len + t, config.no_repeat_ngram_size, vocab)
      log_probs = jnp.where(banned, -jnp.inf, log_probs)
    scores = (log_probs.reshape(batch, beams, vocab) + run_scores[:, :, None]).reshape(batch, -1)
    top_scores, top_index = jax.lax.top_k(scores, keep)  # [B, 2K]
    source, token = top_index // vocab, top_index % vocab
    cand_tokens = jnp.take_along_axis(run_tokens, source[:, :, None], axis=1)  # [B, 2K, T]
    cand_tokens = cand_tokens.at[:, :, t].set(token)
    hits = jnp.isin(token, eos) | (t + 1 == steps)  # [B, 2K]
    # Running beams: the best candidates that did not end.
    run_pick = jax.lax.top_k(top_scores + hits * _NEG, beams)[1]  # [B, K]
    run_tokens = jnp.take_along_axis(cand_tokens, run_pick[:, :, None], axis=1)
    run_scores = jnp.take_along_axis(top_scores + hits * _NEG, run_pick, axis=1)
    run_source = jnp.take_along_axis(source, run_pick, axis=1)  # [B, K]
    # Finished: the first K candidates that ended, if they beat the finished set.
    just_finished = hits & top_mask[None, :]
    final = top_scores / (t + 1.0) ** config.length_penalty
    final = final + (~unsatisfied)[:, None] * _NEG + (~just_finished) * _NEG
    merged_scores = jnp.concatenate([fin_scores, final], axis=1)  # [B, 3K]
    pick = jax.lax.top_k(merged_scores, beams)[1]
    fin_tokens = jnp.take_along_axis(jnp.concatenate([fin_tokens, cand_tokens], axis=1),
                                     pick[:, :, None], axis=1)
    fin_scores = jnp.take_along_axis(merged_scores, pick, axis=1)
    fin_lengths = jnp.take_along_axis(
        jnp.concatenate([fin_lengths, jnp.full((batch, keep), t + 1, jnp.int32)], axis=1),
        pick, axis=1)
    fin_flags = jnp.take_along_axis(jnp.concatenate([fin_flags, just_finished], axis=1), pick,
                                    axis=1)
    # HF's early-stop heuristic (early_stopping=False): the best running score at this length.
    best_running = run_scores[:, 0] / (t + 1.0) ** config.length_penalty  # [B]
    worst = jnp.where(fin_flags, jnp.min(fin_scores, axis=1, keepdims=True), _NEG)  # [B, K]
    unsatisfied &= jnp.any(best_running[:, None] > worst, axis=1)
    cache = _reorder(cache, (run_source + offsets).reshape(-1))
    ones = jnp.ones((batch * beams, 1), jnp.int32)
    logits, cache = runner.decode(params, run_tokens[:, :, t].reshape(-1, 1), ones, cache)
    return (t + 1, logits, cache, run_tokens, run_scores, fin_tokens, fin_scores, fin_lengths,
            fin_flags, unsatisfied, jnp.all(hits))

  def unfinished(state):
    t, unsatisfied, all_hit = state[0], state[9], state[10]
    return (t < steps) & jnp.any(unsatisfied) & ~all_hit

  pad = jnp.full((batch, beams, steps), config.pad_token_id, jnp.int32)
  run_scores = jnp.where(jnp.arange(beams) == 0, 0.0, _NEG)[None].repeat(batch, axis=0)
  state = (jnp.int32(0), logits, cache, pad, run_scores, pad, jnp.full((batch, beams), _NEG),
           jnp.zeros((batch, beams), jnp.int32), jnp.zeros((batch, beams), bool),
           jnp.ones((batch,), bool), jnp.bool_(False))
  state = jax.lax.while_loop(unfinished, step_fn, state)
  return GenerationOutput(tokens=state[5][:, 0], lengths=state[7][:, 0])


_beam_search_jit = jax.jit(_beam_search_loop, static_argnames=('runner', 'config'))
