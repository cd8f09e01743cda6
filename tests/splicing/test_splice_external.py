"""Merging into hosts that store kernels [out, in]: GPT-2-style Conv1D, square and not.

The merged base model alone must compute what the unmerged adapter did (the interceptor's path,
which never reads the kernel layout), and unmerging must give the host's weights back. Hosts: a
small Linen model written here (a Conv1D as GPT-2's, a layer that needs a second argument, a 3-D
einsum kernel) and transformers' `FlaxGPT2LMHeadModule` from a tiny random config.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from transformers import GPT2Config
from transformers.models.gpt2.modeling_flax_gpt2 import FlaxGPT2LMHeadModule

from adapters_jax import add_adapter, get_method, merge_adapter, unmerge_adapter
from tests.tiny_model import perturb_adapter


class Conv1D(nn.Module):
  """GPT-2's layout: kernel [out, in], y = x @ kernel.T + bias."""

  features: int

  @nn.compact
  def __call__(self, x):  # [..., in] -> [..., features]
    kernel = self.param('kernel', nn.initializers.normal(0.5), (self.features, x.shape[-1]))
    bias = self.param('bias', nn.initializers.normal(0.5), (self.features,))
    return x @ kernel.T + bias


class DenseWithDropout(nn.Module):
  """y = dropout(x) @ kernel [in, out]; needs `deterministic`, so it cannot be probed alone."""

  features: int

  @nn.compact
  def __call__(self, x, deterministic):
    kernel = self.param('kernel', nn.initializers.normal(0.5), (x.shape[-1], self.features))
    return nn.Dropout(0.1)(x, deterministic=deterministic) @ kernel


class HeadsProjection(nn.Module):
  """A 3-D einsum kernel [in, heads, head_dim]; output [..., heads * head_dim]."""

  heads: int
  head_dim: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.normal(0.5), (x.shape[-1], self.heads, self.head_dim))
    y = jnp.einsum('...i,ihd->...hd', x, kernel)
    return y.reshape(y.shape[:-2] + (self.heads * self.head_dim,))


class MixedHost(nn.Module):
  @nn.compact
  def __call__(self, x):  # [B, L, 8] -> [B, L, 12]
    h = nn.tanh(Conv1D(12, name='wide')(x))  # kernel [12, 8]
    h = nn.tanh(Conv1D(12, name='square')(h))  # kernel [12, 12]
    h = DenseWithDropout(12, name='needs_flag')(h, True)  # kernel [12, 12], [in, out]
    return HeadsProjection(2, 6, name='heads')(h)  # kernel [12, 2, 6]


def _mixed():
  model = MixedHost()
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  return model, model.init(jax.random.key(1), x)['params'], x


def _host_leaves(params):
  return {p: v for p, v in traverse_util.flatten_dict(params, sep='/').items() if '/adapters/' not in p}


def _assert_merge_matches_and_unmerges(spliced, params, run):
  """merged base == unmerged adapter (1e-5); unmerge gives the host's weights back."""
  unmerged_out = run(spliced, params, 'a')
  merged_spliced, merged = merge_adapter(spliced, params, 'a')
  assert not np.allclose(run(spliced, params, None), unmerged_out, atol=1e-3)  # the adapter acts
  np.testing.assert_allclose(run(merged_spliced, merged, None), unmerged_out, atol=1e-5, rtol=1e-5)
  _, back = unmerge_adapter(merged_spliced, merged, 'a')
  original, restored = _host_leaves(params), _host_leaves(back)
  for path, value in original.items():
    np.testing.assert_allclose(restored[path], value, atol=1e-5, err_msg=path)


# Bugs caught: folding the update as if the kernel were [in, out] (0.4 off on the square kernel, a
# shape error on the wide one); transposing on merge but not on unmerge; an (IA)3 input scale applied
# to the kernel's [out, in] rows instead of its columns.
@pytest.mark.parametrize('method', [
    dict(name='lora', rank=2, sites=(('.*wide', 'parallel'), ('.*square', 'parallel'))),
    dict(name='ia3', sites=(('.*wide', 'output'), ('.*square', 'input'))),
    dict(name='ia3', sites=(('.*wide', 'input'), ('.*square', 'output'))),
], ids=['lora', 'ia3-out-in', 'ia3-in-out'])
def test_merge_into_out_in_kernels_equals_the_unmerged_adapter(method):
  model, params, x = _mixed()
  method = dict(method)
  spliced, p = add_adapter(model, params, 'a', get_method(method.pop('name'), **method),
                           jax.random.key(2), x)
  p = perturb_adapter(p, 'a')
  run = lambda s, q, active: np.asarray(s.apply(q, x, active=active))
  _assert_merge_matches_and_unmerges(spliced, p, run)
  merged_spliced, _ = merge_adapter(spliced, p, 'a')
  assert {s.path: s.kernel_layout for s in merged_spliced.adapter('a').sites} == {
      'wide': 'out_in', 'square': 'out_in'}


# Bugs caught: merging a layout that could not be read (the 3-D kernel, the module that needs a
# second argument) instead of refusing; a refusal that names no site; an override ignored, or one
# contradicting the kernel's shape accepted; unmerge forgetting the layout the merge was given.
def test_merge_refuses_unknown_layouts_naming_each_site_and_the_override():
  model, params, x = _mixed()
  lora = lambda *paths: get_method('lora', rank=2, sites=tuple((p, 'parallel') for p in paths))
  spliced, p = add_adapter(model, params, 'a', lora('needs_flag', 'heads'), jax.random.key(2), x)
  with pytest.raises(ValueError, match='kernel_layout=') as refused:
    merge_adapter(spliced, p, 'a')
  assert 'needs_flag: applying it alone to a probe input raised' in str(refused.value)
  assert 'heads: its kernel is [12, 2, 6], not a 2-D matrix' in str(refused.value)
  # The override settles the probe-less layer; the 3-D kernel is still refused, alone.
  with pytest.raises(ValueError, match='kernel_layout=') as refused:
    merge_adapter(spliced, p, 'a', kernel_layout={'needs_flag': 'in_out', 'heads': 'in_out'})
  assert 'heads: layout' in str(refused.value) and 'needs_flag' not in str(refused.value)
  with pytest.raises(ValueError, match="valid layouts: \\('in_out', 'out_in'\\)"):
    merge_adapter(spliced, p, 'a', kernel_layout={'needs_flag': 'transposed'})

  spliced, p = add_adapter(model, params, 'b', lora('needs_flag'), jax.random.key(2), x)
  p = perturb_adapter(p, 'b')
  with pytest.raises(ValueError, match='needs_flag'):
    merge_adapter(spliced, p, 'b')
  merged_spliced, merged = merge_adapter(spliced, p, 'b', kernel_layout={'needs.*': 'in_out'})
  np.testing.assert_allclose(np.asarray(merged_spliced.apply(merged, x)),
                             np.asarray(spliced.apply(p, x, active='b')), atol=1e-5, rtol=1e-5)
  # Unmerging uses the layout the merge was given.
  _, back = unmerge_adapter(merged_spliced, merged, 'b')
  np.testing.assert_allclose(back['needs_flag']['kernel'], p['needs_flag']['kernel'], atol=1e-6)

  spliced, p = add_adapter(model, params, 'c', lora('wide'), jax.random.key(2), x)
  with pytest.raises(ValueError, match=r"wide: layout 'in_out' needs a kernel \[8, 12\] but it is \[12, 8\]"):
    merge_adapter(spliced, p, 'c', kernel_layout={'wide': 'in_out'})


def tiny_gpt2():
  """transformers' Flax GPT-2 LM from a tiny random config, its params and one call's arguments."""
  config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = FlaxGPT2LMHeadModule(config)
  ids = jax.random.randint(jax.random.key(0), (2, 6), 0, 64)
  args = (ids, jnp.ones_like(ids), jnp.broadcast_to(jnp.arange(6), ids.shape))
  return model, model.init(jax.random.key(1), *args)['params'], args


# transformers' own GPT-2 (FlaxConv1D: c_attn [3E, E], attn c_proj [E, E], mlp c_fc [4E, E],
# mlp c_proj [E, 4E]). Bugs caught: as above, on a model nobody here wrote.
@pytest.mark.parametrize('method', [
    dict(name='lora', rank=2, sites=((r'.*/attn/c_(attn|proj)|.*/mlp/c_(fc|proj)', 'parallel'),)),
    dict(name='ia3', sites=((r'.*/attn/c_attn|.*/mlp/c_fc', 'output'),
                            (r'.*/attn/c_proj|.*/mlp/c_proj', 'input'))),
], ids=['lora', 'ia3'])
def test_merge_into_transformers_flax_gpt2_equals_the_unmerged_adapter(method):
  model, params, args = tiny_gpt2()
  method = dict(method)
  spliced, p = add_adapter(model, params, 'a', get_method(method.pop('name'), **method),
                           jax.random.key(2), *args)
  assert len(spliced.adapter('a').sites) == 8
  p = perturb_adapter(p, 'a', scale=0.3)
  run = lambda s, q, active: np.asarray(s.apply(q, *args, active=active).logits)
  _assert_merge_matches_and_unmerges(spliced, p, run)
