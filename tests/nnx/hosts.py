"""Two tiny NNX transformers built only from flax's own NNX layers, in two styles, and the site
patterns each preset uses on them.

`Encoder`: an encoder as flax's NNX docs assemble one (pre-LayerNorm blocks of
`nnx.MultiHeadAttention` and a two-`nnx.Linear` MLP in a module of its own), mean-pooled into an
`nnx.Linear` classifier. Paths: `layers/0/attn/query` (an `nnx.LinearGeneral`, [..., heads, head_dim]),
`layers/0/attn/out`, `layers/0/mlp/up`, `layers/0/mlp/down`.

`Decoder`: a GPT-style causal language model (`nnx.RMSNorm`, causal `nnx.MultiHeadAttention`, the MLP
as an `nnx.Sequential`, an untied `nnx.Linear` head). Paths: `blocks/0/attention/value`,
`blocks/0/mlp/layers/0` (up), `blocks/0/mlp/layers/2` (down), `lm_head`.
"""

import jax
import numpy as np
from flax import nnx

from adapters_jax.methods import PRESETS, get_method

VOCAB, WIDTH, HEADS, LENGTH = 32, 16, 2, 6


class Mlp(nnx.Module):

  def __init__(self, width: int, rngs: nnx.Rngs):
    self.up = nnx.Linear(width, 2 * width, rngs=rngs)
    self.down = nnx.Linear(2 * width, width, rngs=rngs)

  def __call__(self, x):
    return self.down(nnx.gelu(self.up(x)))


class EncoderBlock(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=HEADS, in_features=WIDTH, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(WIDTH, rngs=rngs)
    self.mlp = Mlp(WIDTH, rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class Encoder(nnx.Module):
  """ids [batch, length] -> logits [batch, 2]."""

  def __init__(self, rngs: nnx.Rngs, layers: int = 2):
    self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
    self.layers = nnx.List([EncoderBlock(rngs) for _ in range(layers)])
    self.classifier = nnx.Linear(WIDTH, 2, rngs=rngs)

  def __call__(self, ids):
    x = self.embed(ids)  # [batch, length, width]
    for layer in self.layers:
      x = layer(x)
    return self.classifier(x.mean(axis=1))


class DecoderBlock(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.attention_norm = nnx.RMSNorm(WIDTH, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(num_heads=HEADS, in_features=WIDTH, decode=False,
                                            rngs=rngs)
    self.mlp_norm = nnx.RMSNorm(WIDTH, rngs=rngs)
    self.mlp = nnx.Sequential(nnx.Linear(WIDTH, 3 * WIDTH, rngs=rngs), nnx.gelu,
                              nnx.Linear(3 * WIDTH, WIDTH, rngs=rngs))

  def __call__(self, x):
    mask = nnx.make_causal_mask(x[..., 0])
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.mlp(self.mlp_norm(x))


class Decoder(nnx.Module):
  """ids [batch, length] -> next-token logits [batch, length, vocab]; `hidden` is what `lm_head` sees."""

  def __init__(self, rngs: nnx.Rngs, layers: int = 2):
    self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
    self.blocks = nnx.List([DecoderBlock(rngs) for _ in range(layers)])
    self.final_norm = nnx.RMSNorm(WIDTH, rngs=rngs)
    self.lm_head = nnx.Linear(WIDTH, VOCAB, rngs=rngs)

  def hidden(self, ids):
    x = self.embed(ids)
    for block in self.blocks:
      x = block(x)
    return self.final_norm(x)  # [batch, length, width]

  def __call__(self, ids):
    return self.lm_head(self.hidden(ids))


HOSTS = {'encoder': Encoder, 'decoder': Decoder}

# Per host: the Linen presets' roles, named by this host's module paths.
ROLES = {
    'encoder': dict(query=r'layers/\d+/attn/query', key=r'layers/\d+/attn/key',
                    value=r'layers/\d+/attn/value', attention_output=r'layers/\d+/attn/out',
                    ffn_output=r'layers/\d+/mlp/down', ffn_block=r'layers/\d+/mlp'),
    'decoder': dict(query=r'blocks/\d+/attention/query', key=r'blocks/\d+/attention/key',
                    value=r'blocks/\d+/attention/value',
                    attention_output=r'blocks/\d+/attention/out',
                    ffn_output=r'blocks/\d+/mlp/layers/2', ffn_block=r'blocks/\d+/mlp'),
}


def preset_sites(host: str, preset: str) -> tuple[tuple[str, str], ...]:
  """The sites preset `preset` has on Linen backbones, on this host's paths."""
  r = ROLES[host]
  return {
      'houlsby': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
      'double_seq_bn': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
      'pfeiffer': ((r['ffn_output'], 'output'),),
      'parallel': ((r['ffn_block'], 'parallel'),),
      'lora': ((r['query'], 'parallel'), (r['value'], 'parallel')),
      'vera': ((r['query'], 'parallel'), (r['value'], 'parallel')),
      'dora': ((r['query'], 'parallel'), (r['value'], 'parallel')),
      'ia3': ((r['key'], 'output'), (r['value'], 'output'), (r['ffn_output'], 'input')),
      'compacter': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
      'compacter++': ((r['ffn_output'], 'output'),),
      'phm_adapter': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
  }[preset]


def sample_ids(seed: int = 0, batch: int = 2) -> jax.Array:
  return jax.random.randint(jax.random.key(seed), (batch, LENGTH), 0, VOCAB)  # [batch, length]


def randomize(model: nnx.Module, variable_type, seed: int, scale: float = 0.3) -> None:
  """Adds noise to every leaf of `variable_type` (so zero-initialised adapters do something); numpy
  draws it, so no leaf shape costs a compilation."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model, variable_type)
  noisy = jax.tree.map(lambda leaf: leaf + scale * rng.standard_normal(leaf.shape).astype(leaf.dtype),
                       state)
  nnx.update(model, noisy)


# Options that make each preset fit the tiny widths here and start as the exact identity.
FIT = {'houlsby': dict(init='zero'), 'double_seq_bn': dict(init='zero'), 'compacter': dict(size=4),
       'compacter++': dict(size=4), 'phm_adapter': dict(n=4, size=8), 'vera': dict(rank=4)}
# Presets that extend attention keys and values (prefix tuning) or lengthen the sequence (prompt
# tuning) are refused by the NNX splice.
NNX_PRESETS = sorted(p for p in PRESETS if not get_method(p).lengthens_sequence
                     and not any(r.placement == 'keys_values' for r in get_method(p).site_rules()))
