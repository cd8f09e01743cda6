"""The presets on NNX models nobody here wrote: Google tunix's Qwen2 and Llama 3 (tiny configs).

Their attention projections are tunix `Einsum` modules ('BTD,DNH->BTNH', 'BTNH,NHD->BTD': several
feature axes, read from the call's shapes), their MLPs `nnx.Linear`s in a module of their own,
their blocks an `nnx.List` at `layers/<i>`. Checked as on the flax-built hosts (test_splice,
test_site_math, test_per_example, test_merge_and_checkpoint): identity at zero init, gradients on
adapter leaves only, the site math against float64 numpy, Stack / Average / PerExample / Parallel,
merge = unmerged, the Orbax round trip bit-identical.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tunix.models.llama3 import model as llama3
from tunix.models.qwen2 import model as qwen2

from adapters_jax.methods import get_method
from adapters_jax.nnx import checkpoint, merge, splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.splicing.composition import Average, Parallel, PerExample, Stack, choice_index
from tests.nnx import hosts

BATCH, LENGTH, VOCAB = 3, 5, 32
ROLES = dict(query=r'layers/\d+/attn/q_proj', key=r'layers/\d+/attn/k_proj',
             value=r'layers/\d+/attn/v_proj', attention_output=r'layers/\d+/attn/o_proj',
             ffn_output=r'layers/\d+/mlp/down_proj', ffn_block=r'layers/\d+/mlp')
FIT, NNX_PRESETS = hosts.FIT, hosts.NNX_PRESETS


def _build(family: str = 'qwen2', layers: int = 2) -> nnx.Module:
  """A tiny tunix model (width 16, 4 query / 2 key-value heads of 4), its base weights perturbed
  (tunix initialises the MLP kernels to zero)."""
  sizes = dict(num_layers=layers, vocab_size=VOCAB, embed_dim=16, hidden_dim=24, num_heads=4,
               head_dim=4, num_kv_heads=2, rope_theta=10000, norm_eps=1e-6)
  lib, cls = {'qwen2': (qwen2, qwen2.Qwen2), 'llama3': (llama3, llama3.Llama3)}[family]
  model = cls(lib.ModelConfig(**sizes), rngs=nnx.Rngs(0))
  hosts.randomize(model, nnx.Param, seed=11, scale=0.2)
  return model


def _inputs(seed: int = 0):
  """(tokens [B, L], positions [B, L], no cache, causal mask [B, L, L]): tunix's call."""
  ids = jax.random.randint(jax.random.key(seed), (BATCH, LENGTH), 0, VOCAB)
  positions = jnp.broadcast_to(jnp.arange(LENGTH), (BATCH, LENGTH))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((LENGTH, LENGTH), bool)), (BATCH, LENGTH, LENGTH))
  return ids, positions, None, mask


def _logits(model, inputs):
  return model(*inputs)[0]  # [B, L, vocab]


def _method(preset, **options):
  r = ROLES
  sites = {
      'houlsby': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
      'double_seq_bn': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
      'pfeiffer': ((r['ffn_output'], 'output'),),
      'parallel': ((r['ffn_block'], 'parallel'),),
      'lora': ((r['query'], 'parallel'), (r['value'], 'parallel')),
      'vera': ((r['query'], 'parallel'), (r['value'], 'parallel')),
      # DoRA reads its site's kernel: the MLP's nnx.Linears (the Einsums' `w` is refused below).
      'dora': ((r'layers/\d+/mlp/(gate|up)_proj', 'parallel'),),
      'ia3': ((r['key'], 'output'), (r['value'], 'output'), (r['ffn_output'], 'input')),
      'compacter': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
      'compacter++': ((r['ffn_output'], 'output'),),
      'phm_adapter': ((r['attention_output'], 'output'), (r['ffn_output'], 'output')),
  }[preset]
  return get_method(preset, sites=sites, **{**FIT.get(preset, {}), **options})


def _flat_paths(state):
  return ['/'.join(str(k) for k in path) for path, _ in nnx.to_flat_state(state)]


@pytest.mark.parametrize('family', ['qwen2', 'llama3'])
def test_every_preset_starts_as_the_base_model_and_then_changes_it(family):
  model = _build(family, layers=1)
  inputs = _inputs()
  base = _logits(model, inputs)
  for index, preset in enumerate(NNX_PRESETS):
    splice.add_adapter(model, preset, _method(preset), jax.random.key(index), *inputs)
    splice.set_active(model, preset)
    np.testing.assert_array_equal(_logits(model, inputs), base, err_msg=preset)
  hosts.randomize(model, AdapterParam, seed=1)
  for preset in NNX_PRESETS:
    splice.set_active(model, preset)
    assert float(jnp.abs(_logits(model, inputs) - base).max()) > 1e-3, preset
  splice.set_active(model, None)
  np.testing.assert_array_equal(_logits(model, inputs), base)


def test_gradients_and_optimizer_state_reach_only_adapter_leaves():
  model = _build(layers=1)
  inputs = _inputs()
  splice.add_adapter(model, 'lora', _method('lora'), jax.random.key(0), *inputs)
  splice.set_active(model, 'lora')
  adapter_paths = _flat_paths(nnx.state(model, AdapterParam))
  assert sorted(adapter_paths) == [f'layers/0/attn/{p}_proj/adapters/lora/lora_{m}'
                                   for p in 'qv' for m in 'ab']
  ids = inputs[0]

  def loss(model):
    logits = _logits(model, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], ids[:, 1:]).mean()

  grads = nnx.grad(loss, argnums=nnx.DiffState(0, AdapterParam))(model)
  assert sorted(_flat_paths(grads)) == sorted(adapter_paths)
  for path, value in nnx.to_flat_state(grads):  # B starts at zero: only B moves first
    assert (float(jnp.abs(value[...]).max()) > 0) == (path[-1] == 'lora_b'), path
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=AdapterParam)
  frozen = nnx.state(model, nnx.Not(AdapterParam))
  optimizer.update(model, grads)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Not(AdapterParam)), frozen)


def _arrays(tree):
  return {k: _arrays(v) if isinstance(v, nnx.Dict) else np.asarray(v[...], np.float64)
          for k, v in tree.items()}


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _houlsby(p, y):
  return y + _gelu(y @ p['down']['kernel'] + p['down']['bias']) @ p['up']['kernel'] + p['up']['bias']


def test_site_math_on_einsum_projections_in_float64():
  # q_proj 'BTD,DNH->BTNH' (LoRA sees [.., N * H]), o_proj 'BTNH,NHD->BTD' (Houlsby on [.., D]).
  model = _build(layers=1)
  inputs = _inputs()
  splice.add_adapter(model, 'lora', get_method('lora', rank=4, alpha=12.0, sites=(
      (ROLES['query'], 'parallel'),)), jax.random.key(0), *inputs)
  houlsby = get_method('houlsby', size=5, sites=((ROLES['attention_output'], 'output'),))
  splice.add_adapter(model, 'h1', houlsby, jax.random.key(1), *inputs)
  splice.add_adapter(model, 'h2', houlsby, jax.random.key(2), *inputs)
  hosts.randomize(model, AdapterParam, seed=3)
  attn = model.layers[0].attn
  rng = np.random.default_rng(0)
  x = rng.standard_normal((BATCH, LENGTH, 16))
  w = np.asarray(attn.q_proj.w[...], np.float64)  # [D, N, H]
  p = _arrays(attn.q_proj.adapters['lora'])
  splice.set_active(model, 'lora')
  want = np.einsum('btd,dnh->btnh', x, w) + (x @ p['lora_a'] @ p['lora_b'] * 3.0).reshape(
      BATCH, LENGTH, 4, 4)
  np.testing.assert_allclose(attn.q_proj(jnp.asarray(x, jnp.float32)), want, rtol=1e-5, atol=1e-5)

  heads = rng.standard_normal((BATCH, LENGTH, 4, 4))
  y = np.einsum('btnh,nhd->btd', heads, np.asarray(attn.o_proj.w[...], np.float64))
  p1, p2 = (_arrays(attn.o_proj.adapters[n]) for n in ('h1', 'h2'))
  for choice, want in ((Stack('h1', 'h2'), _houlsby(p2, _houlsby(p1, y))),
                       (Average('h1', 'h2', weights=(3, 1)),
                        0.75 * _houlsby(p1, y) + 0.25 * _houlsby(p2, y))):
    splice.set_active(model, choice)
    np.testing.assert_allclose(attn.o_proj(jnp.asarray(heads, jnp.float32)), want, rtol=1e-5,
                               atol=1e-5)


def test_per_example_and_parallel_rows_equal_their_branches_alone():
  model = _build()
  inputs = _inputs()
  splice.add_adapter(model, 'lora', _method('lora'), jax.random.key(0), *inputs)
  splice.add_adapter(model, 'houlsby', _method('houlsby', size=4), jax.random.key(1), *inputs)
  hosts.randomize(model, AdapterParam, seed=5)
  branches = ('lora', None, Stack('lora', 'houlsby'))
  alone = {}
  for choice in branches:
    splice.set_active(model, choice)
    alone[choice] = np.asarray(_logits(model, inputs))
  assert len({a.tobytes() for a in alone.values()}) == len(branches)
  rows = ['lora', Stack('lora', 'houlsby'), None]
  choice = PerExample(*branches)
  splice.set_active(model, choice)
  with splice.adapter_index(model, choice_index(choice, rows)):
    mixed = _logits(model, inputs)
  want = np.stack([alone[branch][row] for row, branch in enumerate(rows)])
  np.testing.assert_allclose(mixed, want, rtol=1e-5, atol=1e-5)
  splice.set_active(model, Parallel(*branches))
  logits, cache = splice.run_parallel(model, *inputs)
  assert cache is None
  np.testing.assert_allclose(logits, np.stack([alone[b] for b in branches]), rtol=1e-5, atol=1e-5)


def test_kernel_reading_methods_are_refused_at_einsum_sites():
  # tunix's Einsum keeps its weight in `w`, in its equation's axis order: no kernel to read.
  model = _build(layers=1)
  inputs = _inputs()
  for method in (get_method('dora', sites=((ROLES['query'], 'parallel'),)),
                 get_method('lora', rank=4, init_weights='pissa',
                            sites=((ROLES['value'], 'parallel'),))):
    with pytest.raises(ValueError, match=r'layers/0/attn/[qv]_proj \(Einsum\) has no `kernel`'):
      splice.add_adapter(model, 'a', method, jax.random.key(0), *inputs)
  assert splice.adapted_sites(model) == {}


@pytest.mark.parametrize('preset', ['lora', 'ia3', 'dora'])
def test_merged_equals_unmerged_on_the_mlp(preset):
  # nnx.Linear kernels fold; tunix's Einsum keeps its weight in `w`, and merge refuses it.
  sites = {'lora': ((r'layers/\d+/mlp/(gate|up)_proj', 'parallel'),),
           'dora': ((r'layers/\d+/mlp/(gate|up)_proj', 'parallel'),),
           'ia3': ((r'layers/\d+/mlp/up_proj', 'output'), (ROLES['ffn_output'], 'input'))}[preset]
  model = _build()
  inputs = _inputs()
  splice.add_adapter(model, 'a', get_method(preset, sites=sites), jax.random.key(0), *inputs)
  hosts.randomize(model, AdapterParam, seed=4)
  base = nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam)))
  splice.set_active(model, 'a')
  unmerged = _logits(model, inputs)
  merge.merge_adapter(model, 'a')
  np.testing.assert_allclose(_logits(model, inputs), unmerged, rtol=1e-5, atol=1e-5)
  if preset == 'dora':  # the column norms are lost in the merge
    with pytest.raises(NotImplementedError, match='cannot be unmerged'):
      merge.unmerge_adapter(model, 'a')
    return
  merge.unmerge_adapter(model, 'a')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam))), base)
  splice.add_adapter(model, 'q', _method('lora'), jax.random.key(1), *inputs)
  with pytest.raises(ValueError, match='no `kernel`'):
    merge.merge_adapter(model, 'q')


def test_orbax_round_trip_is_bit_identical_on_a_fresh_model(tmp_path):
  model = _build()
  inputs = _inputs()
  method = _method('compacter')
  splice.add_adapter(model, 'task', method, jax.random.key(0), *inputs)
  hosts.randomize(model, AdapterParam, seed=6)
  directory = checkpoint.save_adapter(tmp_path / 'task', model, 'task', base_name='tiny-qwen2')
  fresh = _build()
  checkpoint.restore_adapter(directory, fresh, *inputs)
  saved, restored = checkpoint.adapter_arrays(model, 'task'), checkpoint.adapter_arrays(fresh, 'task')
  assert sorted(saved) == sorted(restored)
  for path in saved:
    np.testing.assert_array_equal(restored[path], saved[path], err_msg=path)
  splice.set_active(model, 'task')
  splice.set_active(fresh, 'task')
  np.testing.assert_array_equal(_logits(fresh, inputs), _logits(model, inputs))


def test_adapter_drop_and_leave_out_find_tunix_blocks():
  model = _build()
  inputs = _inputs()
  splice.add_adapter(model, 'lora', _method('lora'), jax.random.key(0), *inputs)
  top = splice.add_adapter(model, 'top', _method('lora', leave_out=(0,)), jax.random.key(1), *inputs)
  assert [s.path for s in top.sites] == ['layers/1/attn/q_proj', 'layers/1/attn/v_proj']
  hosts.randomize(model, AdapterParam, seed=7)
  for projection in ('q_proj', 'v_proj'):  # `top` := `lora` in block 1
    site = getattr(model.layers[1].attn, projection)
    for leaf in ('lora_a', 'lora_b'):
      site.adapters['top'][leaf][...] = site.adapters['lora'][leaf][...]
  splice.set_active(model, 'top')
  want = _logits(model, inputs)
  splice.set_active(model, 'lora', skip_layers=1)
  np.testing.assert_array_equal(_logits(model, inputs), want)
  splice.set_active(model, 'lora')
  assert float(jnp.abs(_logits(model, inputs) - want).max()) > 1e-3
