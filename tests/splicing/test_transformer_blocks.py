"""The transformer block of a site comes from the host's module tree, whatever the blocks are named.

Hosts written here with other naming than ours (`blocks_0` Linen lists with auto-named sub-modules,
T5-style `block/0/layer/1` sub-layers, a model with no blocks at all) and transformers' Flax GPT-2
(`transformer/h/0`). `leave_out`, `skip_layers` and AdapterDrop must act on whole blocks there, and
refuse, naming `block_pattern=`, where no block can be found.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from transformers import BertConfig
from transformers.models.bert.modeling_flax_bert import FlaxBertForSequenceClassificationModule

from adapters_jax import add_adapter, get_method
from adapters_jax.methods import adapter_drop
from adapters_jax.splicing import trainable
from adapters_jax.splicing.composition import CompositionError
from tests.splicing.test_splice_external import tiny_gpt2
from tests.tiny_model import perturb_adapter

HIDDEN = 8


class Mlp(nn.Module):
  @nn.compact
  def __call__(self, x):  # auto-named `Dense_0`, `Dense_1`: a same-class run inside each block
    return nn.Dense(HIDDEN)(nn.tanh(nn.Dense(2 * HIDDEN)(x)))


class ListBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + Mlp()(nn.Dense(HIDDEN, name='query')(x))  # Mlp is auto-named `Mlp_0`, alone


class ListHost(nn.Module):
  """Blocks in a Linen list: `blocks_0/query`, `blocks_0/Mlp_0/Dense_1`, ..."""

  def setup(self):
    self.blocks = [ListBlock() for _ in range(3)]

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return x


class SelfAttentionLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(HIDDEN, name='query')(x)


class FeedForwardLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + nn.Dense(HIDDEN, name='wo')(nn.relu(nn.Dense(2 * HIDDEN, name='wi')(x)))


class SubLayers(nn.Module):
  def setup(self):  # `0`, `1`: sub-layers of different classes
    self.sub_layers = [SelfAttentionLayer(name='0'), FeedForwardLayer(name='1')]

  def __call__(self, x):
    for sub_layer in self.sub_layers:
      x = sub_layer(x)
    return x


class T5Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return SubLayers(name='layer')(x)


class BlockCollection(nn.Module):
  def setup(self):
    self.blocks = [T5Block(name=str(i)) for i in range(2)]

  def __call__(self, x):
    for block in self.blocks:
      x = block(x)
    return x


class T5StyleHost(nn.Module):
  """`encoder/block/{i}/layer/{j}/...` as Hugging Face T5 names them."""

  @nn.compact
  def __call__(self, x):
    return BlockCollection(name='block')(x)


class FlatHost(nn.Module):
  """No run of indexed modules: `enc0_query`, `enc1_query` carry the block only in their names."""

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = x + nn.Dense(HIDDEN, name=f'enc{i}_query')(x)
    return x


def _splice(model, method, **kwargs):
  x = jax.random.normal(jax.random.key(0), (2, 3, HIDDEN))
  params = model.init(jax.random.key(1), x)['params']
  spliced, p = add_adapter(model, params, 'a', method, jax.random.key(2), x, **kwargs)
  return spliced, p, x


def _sites(spliced):
  return {s.path: s.layer for s in spliced.adapter('a').sites}


def _lora(pattern, **kwargs):
  return get_method('lora', rank=2, sites=((pattern, 'parallel'),), **kwargs)


# Bug caught: the block read by a name pattern (`layer/1` taken for block 1, so block 0's
# feed-forward sub-layer kept its adapter and block 1's self-attention lost its own).
def test_leave_out_drops_every_sub_layer_of_a_t5_style_block_and_nothing_else():
  everywhere = r'.*/(query|wi|wo)'
  spliced, _, _ = _splice(T5StyleHost(), _lora(everywhere))
  assert _sites(spliced) == {
      'block/0/layer/0/query': 0, 'block/0/layer/1/wi': 0, 'block/0/layer/1/wo': 0,
      'block/1/layer/0/query': 1, 'block/1/layer/1/wi': 1, 'block/1/layer/1/wo': 1}
  spliced, _, _ = _splice(T5StyleHost(), _lora(everywhere, leave_out=(0,)))
  assert _sites(spliced) == {'block/1/layer/0/query': 1, 'block/1/layer/1/wi': 1,
                             'block/1/layer/1/wo': 1}


# Bugs caught: `blocks_0` not recognised (leave_out silently ignored); the nearest indexed ancestor
# taken even when it is alone of its kind (`Mlp_0`: every site would be block 0).
def test_blocks_of_a_linen_list_with_auto_named_sub_modules():
  spliced, _, _ = _splice(ListHost(), _lora(r'.*/(query|Dense_1)', leave_out=(1,)))
  assert _sites(spliced) == {'blocks_0/query': 0, 'blocks_0/Mlp_0/Dense_1': 0,
                             'blocks_2/query': 2, 'blocks_2/Mlp_0/Dense_1': 2}


# Bug caught: leave_out / skip_layers silently ignored on a host without blocks; a block_pattern
# not used.
def test_no_block_structure_is_refused_naming_block_pattern():
  with pytest.raises(ValueError, match=r'(?s)leave_out=\(0,\) .* none of the sites is inside a block.*'
                                       r'block_pattern='):
    _splice(FlatHost(), _lora(r'enc\d_query', leave_out=(0,)))
  spliced, p, x = _splice(FlatHost(), _lora(r'enc\d_query'))
  assert _sites(spliced) == {'enc0_query': None, 'enc1_query': None}
  with pytest.raises(CompositionError, match=r'(?s)skip_layers=\(0,\) .*Sites:\n  enc0_query\n  '
                                            r'enc1_query\nPass .*block_pattern='):
    spliced.apply(p, x, active='a', skip_layers=1)
  spliced, _, _ = _splice(FlatHost(), _lora(r'enc\d_query', leave_out=(0,)),
                          block_pattern=r'enc(\d+)_')
  assert _sites(spliced) == {'enc1_query': 1}


# transformers' GPT-2 names its blocks `transformer/h/0`. Bugs caught: leave_out and skip_layers
# (AdapterDrop) ignored there; skip_layers dropping the wrong block; adapter_drop's train_also
# narrowed to `layer_<i>/` names (nothing of GPT-2 trained) or not narrowed (block 0's norms trained).
def test_leave_out_and_skip_layers_on_gpt2_h_blocks():
  model, params, args = tiny_gpt2()
  pfeiffer = get_method('pfeiffer', size=4, sites=((r'.*/attn/c_proj|.*/mlp/c_proj', 'output'),))
  spliced, p = add_adapter(model, params, 'a', pfeiffer, jax.random.key(2), *args)
  assert _sites(spliced) == {'transformer/h/0/attn/c_proj': 0, 'transformer/h/0/mlp/c_proj': 0,
                             'transformer/h/1/attn/c_proj': 1, 'transformer/h/1/mlp/c_proj': 1}
  p = perturb_adapter(p, 'a')
  logits = lambda q, **kw: np.asarray(spliced.apply(q, *args, active='a', **kw).logits)
  # Reference: the same adapters with block 0's up-projection zeroed act as the identity there.
  flat = traverse_util.flatten_dict(p, sep='/')
  zeroed = traverse_util.unflatten_dict(
      {k: (jnp.zeros_like(v) if k.startswith('transformer/h/0/') and '/adapters/a/up/' in k else v)
       for k, v in flat.items()}, sep='/')
  assert not np.allclose(logits(p), logits(zeroed), atol=1e-4)
  np.testing.assert_allclose(logits(p, skip_layers=1), logits(zeroed), atol=1e-5, rtol=1e-5)

  left_out, _ = add_adapter(model, params, 'a', get_method('pfeiffer', size=4, leave_out=(0,),
                                                           sites=pfeiffer.sites),
                            jax.random.key(2), *args)
  assert _sites(left_out) == {'transformer/h/1/attn/c_proj': 1, 'transformer/h/1/mlp/c_proj': 1}

  # AdapterDrop as a config: block 0 gets no adapter and its layer norms stay frozen.
  with_norms = dataclasses.replace(pfeiffer, train_also=(r'.*/ln_\d/.*',))
  dropped, p = add_adapter(model, params, 'a', adapter_drop(with_norms, [0], block_prefix='h/'),
                           jax.random.key(2), *args)
  assert _sites(dropped) == {'transformer/h/1/attn/c_proj': 1, 'transformer/h/1/mlp/c_proj': 1}
  mask = traverse_util.flatten_dict(
      trainable.make_mask(p, trainable.adapter_rules([dropped.adapter('a')], train_head=False)),
      sep='/')
  assert {k for k, v in mask.items() if v and '/adapters/' not in k} == {
      f'transformer/h/1/{norm}/{leaf}' for norm in ('ln_1', 'ln_2') for leaf in ('scale', 'bias')}


# transformers' Flax BERT (`bert/encoder/layer/{i}`) keeps the indices its names give. Bug caught:
# a rule that knows only `_`-joined names (`layer_3`), missing a collection's children `layer/3`.
def test_hf_flax_bert_blocks_keep_their_indices():
  model = FlaxBertForSequenceClassificationModule(BertConfig(
      vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
  ids = jax.random.randint(jax.random.key(0), (2, 5), 1, 64)
  args = (ids, jnp.ones_like(ids), jnp.zeros_like(ids), jnp.broadcast_to(jnp.arange(5), ids.shape), None)
  params = model.init(jax.random.key(1), *args)['params']
  spliced, _ = add_adapter(model, params, 'a', get_method('pfeiffer', size=4, leave_out=(1,)),
                           jax.random.key(2), *args)
  assert _sites(spliced) == {'bert/encoder/layer/0/output/dense': 0,
                             'bert/encoder/layer/2/output/dense': 2}
