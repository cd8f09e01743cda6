"""Named adapter sites: regular expressions over `/`-joined module paths.

A *site* is a module call inside a host model (usually a dense projection) at which an adapter is
applied. Sites are named by whole-name regular expressions over the module path, e.g.
`encoder/layer_3/attention/output`. The constants below cover the module naming of this project's
backbones (`encoder/layer_{i}/attention/query`, `.../ffn/output`, or `encoder/layers/...` when the layers
are scanned; the decoders name theirs alike under `decoder/`) and that of Hugging Face Flax BERT/RoBERTa
models (`bert/encoder/layer/{i}/attention/self/query`, `.../output/dense`), so presets splice into all
of them without per-model edits.

Each pattern is matched with `re.fullmatch`, so a pattern names whole paths.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence

# A transformer block: ours `layer_3` (or `layers` when scanned), Hugging Face `layer/3`.
_OURS = r'(.*/)?(layer_\d+|layers)'
_HF = r'(.*/)?layer/\d+'

# Ours: self-attention `attention`, and in encoder-decoders (T5) also `cross_attention`.
_ATTN = r'(cross_)?attention'

QUERY = rf'{_OURS}/{_ATTN}/query|{_HF}/attention/self/query'
KEY = rf'{_OURS}/{_ATTN}/key|{_HF}/attention/self/key'
VALUE = rf'{_OURS}/{_ATTN}/value|{_HF}/attention/self/value'
# The attention output projection, before dropout, residual and LayerNorm.
ATTENTION_OUTPUT = rf'{_OURS}/{_ATTN}/output|{_HF}/attention/output/dense'
# The first FFN projection (hidden -> intermediate).
FFN_INTERMEDIATE = rf'{_OURS}/ffn/intermediate|{_HF}/intermediate/dense'
# The second FFN projection (intermediate -> hidden), before dropout, residual and LayerNorm.
FFN_OUTPUT = rf'{_OURS}/ffn/output|{_HF}/output/dense'
# The whole feed-forward block (input: hidden states, output: before the residual). Our backbones only.
FFN_BLOCK = rf'{_OURS}/ffn'
# The gate projection of a gated MLP (SwiGLU/GeGLU: output(act(gate(x)) * intermediate(x))); our
# Llama-family decoders (`decoder/layer_{i}/ffn/gate`), whose `intermediate` is HF's `up_proj`.
FFN_GATE = rf'{_OURS}/ffn/gate'

# Where an attention's keys, values and mask are final (`adapters_jax.nn.key_value_hook`), our
# backbones only: encoder self-attention (BERT/RoBERTa, T5's encoder), decoder self-attention (T5's
# decoder, GPT-2, Llama-family) and T5's cross-attention. Placement `keys_values`.
ENCODER_KEY_VALUES = r'(.*/)?encoder/(layer_\d+|layers)/attention/prefix'
DECODER_KEY_VALUES = r'(.*/)?decoder/(layer_\d+|layers)/attention/prefix'
CROSS_KEY_VALUES = r'(.*/)?decoder/(layer_\d+|layers)/cross_attention/prefix'

# Where a host's token embeddings enter its sequence (`adapters_jax.models.input_embeddings`): an
# identity whose output may grow (prompt tuning). Our backbones only.
INPUT_EMBEDDINGS = r'(.*/)?input_embeddings'
# Where our BERT/RoBERTa's embeddings module returns its output (after positions, token types,
# LayerNorm and dropout): an identity whose output may grow, as `INPUT_EMBEDDINGS` (prompt tuning
# with `insert_at='embeddings_output'`, AdapterHub's placement). Placement `output`.
EMBEDDINGS_OUTPUT = r'(.*/)?embeddings/embeddings_output'

# Where our BERT/RoBERTa and decoders pass their position ids (`adapters_jax.models.position_ids`):
# an identity a method may shift (prefix tuning with positions='after_prefix'). Placement `output`.
# T5's stacks pass their relative bias's key positions through one named `key_positions`.
POSITION_IDS = r'(.*/)?position_ids'

# Leaves trained alongside adapters by some methods (Houlsby: layer norms), and the task head.
LAYER_NORM_PARAMS = r'(?i).*layer_?norm[^/]*/[^/]+'
HEAD_PARAMS = r'(.*/)?classifier/.*'

PLACEMENTS = ('output', 'parallel', 'input', 'keys_values')

# A transformer block in a path: `layer_<i>/` (ours), `layer/<i>/` (HF Flax) or `layers/<i>/`.
LAYER_PREFIX = r'layers?[_/]'
_LAYER_INDEX = re.compile(rf'(?:^|/){LAYER_PREFIX}(\d+)(?:/|$)')


@dataclasses.dataclass(frozen=True)
class SiteRule:
  """Where an adapter goes: every module whose path fully matches `pattern`.

  Attributes:
    pattern: whole-name regular expression over `/`-joined module paths.
    placement: `output` (adapter applied to the module's output, y <- a(y)), `parallel` (added to the
      output from the module's input, y <- y + a(x)), `input` (applied to the input, x <- a(x)) or
      `keys_values` (at an attention's `KeyValueHook`: (key, value, mask) <- a(key, value, mask)).
  """

  pattern: str
  placement: str = 'output'

  def __post_init__(self):
    if self.placement not in PLACEMENTS:
      raise ValueError(f'Unknown placement {self.placement!r}; valid placements: {PLACEMENTS}.')
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise ValueError(f'Site pattern {self.pattern!r} is not a valid regular expression: {e}') from e


def as_site_rules(sites: Iterable[SiteRule | tuple[str, str] | str]) -> tuple[SiteRule, ...]:
  """Normalises `(pattern, placement)` pairs or bare patterns (placement `output`) to `SiteRule`s."""
  rules = []
  for site in sites:
    if isinstance(site, SiteRule):
      rules.append(site)
    elif isinstance(site, str):
      rules.append(SiteRule(site))
    else:
      rules.append(SiteRule(*site))
  return tuple(rules)


def layer_index(path: str) -> int | None:
  """The block index in a path named as ours or HF Flax BERT's (`.../layer_3/...`, `.../layer/3/...`).

  A name guess, for parameter paths (`methods.adapter_drop` narrows `train_also` with it); the block
  of a site comes from the host's module tree (`adapters_jax.splicing.transformer_blocks`).
  """
  match = _LAYER_INDEX.search(path)
  return int(match.group(1)) if match else None


class SiteMatchError(ValueError):
  """A site pattern matched no module of the host model."""


def match_sites(rules: Sequence[SiteRule], module_paths: Sequence[str]) -> dict[str, SiteRule]:
  """Maps every module path matched by a rule to that rule (first matching rule wins).

  Args:
    rules: site rules, in priority order.
    module_paths: every module path seen while the host model ran.

  Returns:
    `{module_path: rule}` in the order of `module_paths`.

  Raises:
    SiteMatchError: a rule matched no path; the message lists the closest module paths.
  """
  matched: dict[str, SiteRule] = {}
  for rule in rules:
    hits = [p for p in module_paths if re.fullmatch(rule.pattern, p)]
    if not hits and rule.placement == 'keys_values':
      raise SiteMatchError(_no_hook_message(rule.pattern, module_paths))
    if not hits and rule.pattern.startswith(POSITION_IDS):
      raise SiteMatchError('The host model has no position-ids site (a `PositionIds` submodule named '
                           '`position_ids`, adapters_jax.models.position_ids), which shifts the real '
                           "tokens after a prefix (positions='after_prefix'): our BERT/RoBERTa, "
                           "decoders and T5 have it; use positions='none' on other hosts.")
    if not hits:
      raise SiteMatchError(_no_match_message(rule.pattern, module_paths))
    for path in hits:
      matched.setdefault(path, rule)
  return {p: matched[p] for p in module_paths if p in matched}


def _no_match_message(pattern: str, module_paths: Sequence[str]) -> str:
  # Rank candidates by similarity to the pattern with regex syntax stripped.
  plain = re.sub(r'[\\^$.*+?()\[\]{}|]', '', pattern)
  close = difflib.get_close_matches(plain, module_paths, n=8, cutoff=0.0)
  listing = '\n  '.join(close) if close else '(the model has no sub-modules)'
  return (f'Site pattern {pattern!r} matches no module of the host model (patterns must match the '
          f'whole `/`-joined module path). Module paths it could have meant:\n  {listing}')


def _no_hook_message(pattern: str, module_paths: Sequence[str]) -> str:
  attention = [p for p in module_paths if re.search(r'attention|attn', p.rsplit('/', 1)[-1])]
  listing = ', '.join(attention[:6]) or 'none'
  return (f'Site pattern {pattern!r} (placement keys_values) matches no module: the host model\'s '
          'attention does not expose its keys and values (a `KeyValueHook` submodule named '
          '`prefix`, adapters_jax.nn.key_value_hook, called on (key, value, mask) before the '
          "scores), as this library's BERT/RoBERTa, T5 and decoder backbones do. Load the model with "
          f'adapters_jax.models, or add the hook to its attention. Attention modules seen: {listing}.')
