"""Prompt tuning (Lester et al. 2021): P learned vectors among the input embeddings.

    embedded [batch, seq, d]  ->  [prompt; embedded]            (combine='prefix')
                              ->  [embedded[:1]; prompt; rest]   (combine='prefix_after_bos')

Where (`insert_at`):
  'input_embeddings': the host's input-embeddings site (`adapters_jax.models.input_embeddings`),
    on the token embeddings; the host grows its attention mask, positions and token types with the
    sequence, so the prompt gets positions and LayerNorm and real tokens sit P positions later
    (PEFT's PROMPT_TUNING). Our BERT/RoBERTa, T5 and decoders have the site.
  'embeddings_output': the output of our BERT/RoBERTa's embeddings module (after positions, token
    types, LayerNorm and dropout; site `embeddings/embeddings_output`); only the mask grows, the
    prompt gets no position, LayerNorm or dropout and real tokens keep their positions
    (AdapterHub's `prompt_tuning`, whose forward hook sits on the embeddings module).
Decoders return
outputs for the real tokens only (the last `seq` positions), so causal-LM labels and loss masks
need no change and prompt positions never count in the loss; encoders (BERT, T5's encoder) return
every position, the prompt's included, as PEFT and AdapterHub do (a BERT head reads position 0: the
first prompt vector with 'prefix', the [CLS] token with 'prefix_after_bos').

Initialisation (`init`), as PEFT and AdapterHub offer it:
  'random_uniform': U(-init_scale, init_scale);
  'from_token_ids': the host's embeddings of `init_token_ids`, repeated and cut to P (what a
    text's tokens give: `with_tokenizer` tokenizes `init_text` into them);
  'sample_vocab': the host's embeddings of P token ids drawn uniformly from the vocabulary.
The host's embedding matrix is the one parameter matching `vocabulary_param`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.splicing.sites import EMBEDDINGS_OUTPUT, INPUT_EMBEDDINGS, SiteRule

COMBINES = ('prefix', 'prefix_after_bos')
INITS = ('random_uniform', 'from_token_ids', 'sample_vocab')
# insert_at -> (the site's pattern, what a host must expose there).
INSERT_SITES = {
    'input_embeddings': (INPUT_EMBEDDINGS, (
        'Prompt tuning needs a host that exposes its input embeddings: a module named '
        '`input_embeddings` called on the token embeddings [batch, seq, hidden], whose caller grows '
        'the attention mask, positions and token types when the sequence grows '
        '(adapters_jax.models.input_embeddings; our BERT, T5 and decoder backbones have it, Hugging '
        'Face Flax models do not).')),
    'embeddings_output': (EMBEDDINGS_OUTPUT, (
        "Prompt tuning with insert_at='embeddings_output' needs a host whose embeddings module passes "
        'its output [batch, seq, hidden] through a module `embeddings/embeddings_output` and grows the '
        'attention mask with it (our BERT/RoBERTa; T5 and the decoders lack it, as AdapterHub has no '
        "prompt tuning there): use insert_at='input_embeddings'.")),
}


class PromptTuning(nn.Module):
  """Inserts the learned `prompt` [length, features] into every row of `embedded`."""

  length: int
  features: int
  combine: str = 'prefix'
  init_kind: str = 'random_uniform'  # `PromptTuningConfig.init` (`init` is Module.init)
  init_scale: float = 0.5
  insert_at: str = 'input_embeddings'
  init_token_ids: tuple[int, ...] = ()

  @nn.compact
  def __call__(self, embedded, shared=None, deterministic: bool = True, embedding_table=None):
    """`embedded` [batch, seq, features] -> [batch, seq + length, features]."""
    del shared, deterministic
    prompt = self.param('prompt', self._initializer(embedding_table),
                        (self.length, self.features))  # [length, features]
    if self.is_initializing():
      return embedded  # init sees a sample of the site's width only
    batch = embedded.shape[0]
    tiled = jnp.broadcast_to(prompt.astype(embedded.dtype)[None],
                             (batch, self.length, self.features))
    if self.combine == 'prefix':
      return jnp.concatenate([tiled, embedded], axis=1)
    return jnp.concatenate([embedded[:, :1], tiled, embedded[:, 1:]], axis=1)

  def _initializer(self, table):
    if self.init_kind == 'random_uniform':
      scale = self.init_scale
      return lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -scale, scale)

    if table is None:
      if self.is_initializing():
        raise ValueError(f"Prompt init {self.init_kind!r} needs the host's embedding matrix; "
                         'add the adapter with add_adapter (it passes the matrix).')
      # At apply, Flax only checks the stored prompt's shape against the initializer's.
      return nn.initializers.zeros

    def from_table(key, shape):
      if self.init_kind == 'sample_vocab':
        ids = jax.random.randint(key, (shape[0],), 0, table.shape[0])
      else:
        ids = jnp.asarray(repeat_to_length(self.init_token_ids, shape[0]), jnp.int32)
      return jnp.asarray(table, jnp.float32)[ids].reshape(shape)

    return from_table


def repeat_to_length(token_ids: tuple[int, ...], length: int) -> tuple[int, ...]:
  """`token_ids` repeated until `length` long, then cut to `length` (PEFT's and AdapterHub's rule)."""
  if not token_ids:
    return ()
  return (tuple(token_ids) * math.ceil(length / len(token_ids)))[:length]


@dataclasses.dataclass(frozen=True)
class PromptTuningConfig(MethodConfig):
  """Prompt tuning.

  Attributes:
    length: P, the number of learned vectors (0 gives the base model).
    combine: 'prefix' (in front of every token) or 'prefix_after_bos' (after the first token,
      which must be a real token: right padding; with left padding the prompt lands after a pad).
    init: 'random_uniform', 'from_token_ids' or 'sample_vocab' (module docstring).
    init_scale: half-width of the uniform init.
    insert_at: 'input_embeddings' (on the token embeddings, before positions and LayerNorm: PEFT's)
      or 'embeddings_output' (after the embeddings module: AdapterHub's; our BERT/RoBERTa only).
    init_token_ids: token ids whose embeddings start the prompt (`init='from_token_ids'`).
    init_text: a text to start from; tokenized into `init_token_ids` by `with_tokenizer` where
      a tokenizer is at hand (experiment runs do it).
    vocabulary_param: whole-name regex of the host's embedding matrix `[vocab, hidden]`.
    sites: empty: the site `insert_at` names; set it to name another site (placement 'output').
  """

  kind = 'prompt_tuning'
  lengthens_sequence = True
  sites: tuple[tuple[str, str], ...] = ()
  length: int = 10
  combine: str = 'prefix'
  init: str = 'random_uniform'
  init_scale: float = 0.5
  insert_at: str = 'input_embeddings'
  init_token_ids: tuple[int, ...] = ()
  init_text: str = ''
  vocabulary_param: str = r'(.*/)?(word_embeddings|shared)/embedding'

  def __post_init__(self):
    super().__post_init__()
    if self.combine not in COMBINES:
      raise ValueError(f'Unknown prompt combine {self.combine!r}; valid: {COMBINES}.')
    if self.init not in INITS:
      raise ValueError(f'Unknown prompt init {self.init!r}; valid: {INITS}.')
    if self.insert_at not in INSERT_SITES:
      raise ValueError(f'Unknown prompt insert_at {self.insert_at!r}; valid: {tuple(INSERT_SITES)}.')
    if self.length < 0:
      raise ValueError(f'Prompt length must be >= 0, got {self.length}.')
    needs_ids = self.init == 'from_token_ids' and self.length and not self.init_text
    if needs_ids and not self.init_token_ids:
      raise ValueError("init='from_token_ids' needs init_token_ids (or init_text, tokenized by "
                       'with_tokenizer).')
    if any(placement != 'output' for _, placement in self.sites):
      raise ValueError("Prompt tuning rewrites the input-embeddings site's output; valid "
                       "placements: ('output',).")

  @property
  def missing_site_hint(self) -> str:
    return INSERT_SITES[self.insert_at][1]

  def site_rules(self) -> tuple[SiteRule, ...]:
    if self.sites:
      return super().site_rules()
    return (SiteRule(INSERT_SITES[self.insert_at][0], 'output'),)

  def make_module(self, site: SiteInfo) -> nn.Module:
    return PromptTuning(length=self.length, features=site.out_features, combine=self.combine,
                        init_kind=self.init, init_scale=self.init_scale,
                        init_token_ids=self.init_token_ids)

  def with_tokenizer(self, tokenizer: Any) -> PromptTuningConfig:
    """`init_text` tokenized (without special tokens) into `init_token_ids`, with
    `init='from_token_ids'`; itself when it has no `init_text`."""
    if not self.init_text:
      return self
    if tokenizer is None:
      raise ValueError(f'init_text {self.init_text!r} needs a tokenizer; load the model with its '
                       'tokenizer or give init_token_ids.')
    ids = tokenizer(self.init_text, add_special_tokens=False)['input_ids']
    if not ids:
      raise ValueError(f'init_text {self.init_text!r} gives no tokens; give a longer text.')
    return dataclasses.replace(self, init='from_token_ids',
                               init_token_ids=tuple(int(i) for i in ids))

  def init_extras(self, host_params: Mapping[str, Any]) -> dict[str, Any]:
    if self.init_text and not self.init_token_ids:
      raise ValueError(f'init_text {self.init_text!r} is not tokenized yet; add '
                       'method.with_tokenizer(tokenizer) instead of method.')
    if self.init == 'random_uniform':
      return {}
    hits = [p for p in host_params if re.fullmatch(self.vocabulary_param, p)]
    if len(hits) != 1:
      raise ValueError(f'Prompt init {self.init!r} reads the one host parameter matching '
                       f'vocabulary_param={self.vocabulary_param!r}; it matches {hits}. Set '
                       'vocabulary_param to the embedding matrix path.')
    return {'embedding_table': host_params[hits[0]]}


def prompt_tuning() -> PromptTuningConfig:
  """Lester et al. 2021: 10 vectors in front of the input, uniform init (AdapterHub's preset
  uses the same combine and init)."""
  return PromptTuningConfig()
