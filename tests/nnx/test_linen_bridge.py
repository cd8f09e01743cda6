"""Adapters cross between a Linen model and its NNX twin: LoRA and Houlsby trained (here: perturbed)
on the project's tiny Linen encoder restore onto an NNX twin built from `nnx.Linear` /
`nnx.LayerNorm` with the same weights, giving the same logits, and adapters of the twin restore
onto the Linen model through the Linen `restore_adapter`."""

import re

import jax
import numpy as np
import pytest
from flax import nnx, traverse_util

from adapters_jax.checkpoint.restore import restore_adapter
from adapters_jax.checkpoint.save import CheckpointError, save_adapter
from adapters_jax.methods import get_method
from adapters_jax.nnx import linen_bridge, splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.splicing.splice import add_adapter
from tests.nnx import hosts
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch

LAYERS, VOCAB, HIDDEN, HEADS, INTERMEDIATE = 1, 64, 16, 2, 32

# Linen module paths (tests/tiny_model.py) -> the twin's.
LINEN_TO_NNX = {
    r'encoder/layer_(\d+)/attention_layer_norm': r'blocks/\1/attn_norm',
    r'encoder/layer_(\d+)/ffn_layer_norm': r'blocks/\1/mlp_norm',
    r'encoder/layer_(\d+)/attention': r'blocks/\1/attn',
    r'encoder/layer_(\d+)/ffn/intermediate': r'blocks/\1/mlp/up',
    r'encoder/layer_(\d+)/ffn/output': r'blocks/\1/mlp/down',
    'embeddings': 'embed',
    'classifier': 'head',
}


def nnx_to_linen(path: str) -> str | None:
  """The map the other way, as a function (the other form a map may take)."""
  block = re.match(r'blocks/(\d+)/(attn_norm|mlp_norm|attn|mlp/up|mlp/down)(?=/|$)', path)
  if block:
    inner = {'attn_norm': 'attention_layer_norm', 'mlp_norm': 'ffn_layer_norm', 'attn': 'attention',
             'mlp/up': 'ffn/intermediate', 'mlp/down': 'ffn/output'}[block[2]]
    return f'encoder/layer_{block[1]}/{inner}{path[block.end():]}'
  first, _, rest = path.partition('/')
  top = {'embed': 'embeddings', 'head': 'classifier'}.get(first)
  return None if top is None else '/'.join(filter(None, (top, rest)))


class TwinAttention(nnx.Module):

  def __init__(self, rngs):
    self.query, self.key, self.value, self.output = (nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)
                                                     for _ in range(4))

  def __call__(self, x, mask):  # x [B, L, H], mask [B, L]
    b, length, _ = x.shape
    d = HIDDEN // HEADS
    q, k, v = (f(x).reshape(b, length, HEADS, d) for f in (self.query, self.key, self.value))
    scores = jax.numpy.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(d)
    scores = jax.numpy.where(mask[:, None, None, :] > 0, scores, -1e9)
    ctx = jax.numpy.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, -1), v)
    return self.output(ctx.reshape(b, length, HIDDEN))


class TwinMlp(nnx.Module):

  def __init__(self, rngs):
    self.up = nnx.Linear(HIDDEN, INTERMEDIATE, rngs=rngs)
    self.down = nnx.Linear(INTERMEDIATE, HIDDEN, rngs=rngs)

  def __call__(self, x):
    return self.down(jax.nn.gelu(self.up(x), approximate=False))


class TwinBlock(nnx.Module):

  def __init__(self, rngs):
    self.attn, self.attn_norm = TwinAttention(rngs), nnx.LayerNorm(HIDDEN, rngs=rngs)
    self.mlp, self.mlp_norm = TwinMlp(rngs), nnx.LayerNorm(HIDDEN, rngs=rngs)

  def __call__(self, x, mask):
    x = self.attn_norm(x + self.attn(x, mask))
    return self.mlp_norm(x + self.mlp(x))


class Twin(nnx.Module):
  """The NNX twin of `TinyClassifier`: (ids [B, L], mask [B, L]) -> logits [B, 2]."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, HIDDEN, rngs=rngs)
    self.blocks = nnx.List([TwinBlock(rngs) for _ in range(LAYERS)])
    self.head = nnx.Linear(HIDDEN, 2, rngs=rngs)

  def __call__(self, ids, mask):
    x = self.embed(ids)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(jax.numpy.tanh(x[:, 0]))


def twin_of(linen_params) -> Twin:
  """A twin holding the Linen base's weights (every leaf copied through the map)."""
  twin = Twin(nnx.Rngs(1))
  flat = nnx.to_flat_state(nnx.state(twin, nnx.Param))
  by_path = {'/'.join(str(k) for k in path): variable for path, variable in flat}
  linen_flat = traverse_util.flatten_dict(linen_params, sep='/')
  assert len(linen_flat) == len(by_path)
  for path, value in linen_flat.items():
    by_path[linen_bridge.map_path(path, LINEN_TO_NNX)][...] = value
  nnx.update(twin, nnx.from_flat_state(flat))
  return twin


@pytest.fixture(scope='module')
def linen():
  model = TinyClassifier(vocab=VOCAB, hidden=HIDDEN, heads=HEADS, intermediate=INTERMEDIATE,
                         layers=LAYERS)
  return model, init_tiny(model), tiny_batch(vocab=VOCAB)


def test_the_twin_computes_the_linen_model(linen):
  model, params, (ids, mask) = linen
  np.testing.assert_allclose(twin_of(params)(ids, mask), model.apply({'params': params}, ids, mask),
                             atol=1e-5)


def test_linen_adapters_restore_onto_the_nnx_twin(linen, tmp_path):
  model, base, (ids, mask) = linen
  twin = twin_of(base)
  spliced, params = add_adapter(model, base, 'lora', get_method('lora'), jax.random.key(0), ids, mask)
  spliced, params = add_adapter(spliced, params, 'houlsby', get_method('houlsby', size=4),
                                jax.random.key(1), ids, mask)
  params = perturb_adapter(perturb_adapter(params, 'lora', seed=1), 'houlsby', seed=2)
  # Houlsby trains the layer norms and the head with it: its checkpoint carries them.
  flat = traverse_util.flatten_dict(params, sep='/')
  rng = np.random.default_rng(0)
  for path in [p for p in flat if 'layer_norm' in p or p.startswith('classifier')]:
    flat[path] = flat[path] + 0.2 * rng.standard_normal(flat[path].shape).astype(np.float32)
  params = traverse_util.unflatten_dict(flat, sep='/')
  for name in ('lora', 'houlsby'):
    save_adapter(tmp_path / name, spliced, params, name)
    record = linen_bridge.restore_linen_adapter(tmp_path / name, twin, LINEN_TO_NNX, ids, mask)
    assert record['adapter'] == name
  assert any('attn_norm' in p for p in splice.find_adapter(twin, 'houlsby').method.train_also)
  for active in ('lora', 'houlsby', ('lora', 'houlsby')):
    splice.set_active(twin, active)
    want = spliced.apply(params, ids, mask, active=active)
    np.testing.assert_allclose(twin(ids, mask), want, atol=1e-5, rtol=1e-5, err_msg=str(active))
  splice.set_active(twin, None)
  assert not np.allclose(twin(ids, mask), spliced.apply(params, ids, mask, active='lora'))


def test_nnx_adapters_restore_onto_the_linen_model(linen, tmp_path):
  model, base, (ids, mask) = linen
  twin = twin_of(base)
  splice.add_adapter(twin, 'lora', get_method('lora', sites=((r'blocks/\d+/attn/(query|value)',
                                                                'parallel'),)),
                     jax.random.key(0), ids, mask)
  splice.add_adapter(twin, 'pfeiffer', get_method('pfeiffer', size=4, train_also=(),
                                                  sites=((r'blocks/\d+/mlp/down', 'output'),)),
                     jax.random.key(1), ids, mask)
  hosts.randomize(twin, AdapterParam, seed=3)
  spliced = model
  restored = base
  for name in ('lora', 'pfeiffer'):
    directory = linen_bridge.save_linen_adapter(tmp_path / name, twin, name, nnx_to_linen, base)
    spliced, restored = restore_adapter(directory, spliced, restored, ids, mask, strict=True)
  assert spliced.adapter('lora').sites[0].path == 'encoder/layer_0/attention/query'
  for active in ('lora', 'pfeiffer', ('lora', 'pfeiffer')):
    splice.set_active(twin, active)
    np.testing.assert_allclose(spliced.apply(restored, ids, mask, active=active), twin(ids, mask),
                               atol=1e-5, rtol=1e-5, err_msg=str(active))


def test_a_map_without_a_counterpart_is_refused(linen, tmp_path):
  model, base, (ids, mask) = linen
  spliced, params = add_adapter(model, base, 'lora', get_method('lora'), jax.random.key(0), ids, mask)
  save_adapter(tmp_path / 'lora', spliced, params, 'lora')
  twin = twin_of(base)
  partial = {k: v for k, v in LINEN_TO_NNX.items() if 'attention' not in k}
  with pytest.raises(CheckpointError, match='no counterpart.*add an entry'):
    linen_bridge.restore_linen_adapter(tmp_path / 'lora', twin, partial, ids, mask)
  # The first key that matches wins: the queries' LoRA lands on the wider up projection.
  wrong = {r'encoder/layer_(\d+)/attention/query': r'blocks/\1/mlp/up', **LINEN_TO_NNX}
  with pytest.raises(CheckpointError, match='does not fit'):
    linen_bridge.restore_linen_adapter(tmp_path / 'lora', twin, wrong, ids, mask)
  assert splice.adapter_specs(twin) == ()


@pytest.mark.parametrize('method', [get_method('dora', rank=4),
                                    get_method('lora', rank=4, init_weights='pissa'),
                                    get_method('lora', rank=4, init_weights='olora')],
                         ids=['dora', 'pissa', 'olora'])
def test_kernel_reading_adapters_compute_the_linen_model_on_the_twin(linen, method, tmp_path):
  # DoRA reads the site's kernel at every call; PiSSA/OLoRA leave residual kernels, which the NNX
  # splice rebuilds from the twin's own (base) kernels as the Linen splice did from the Linen base.
  model, base, (ids, mask) = linen
  twin = twin_of(base)
  spliced, params = add_adapter(model, base, 'a', method, jax.random.key(0), ids, mask)
  params = perturb_adapter(params, 'a', seed=5)
  save_adapter(tmp_path / 'a', spliced, params, 'a')
  linen_bridge.restore_linen_adapter(tmp_path / 'a', twin, LINEN_TO_NNX, ids, mask)
  linen_flat = traverse_util.flatten_dict(params, sep='/')
  for path, variable in nnx.to_flat_state(nnx.state(twin, nnx.Param)):
    twin_path = '/'.join(str(k) for k in path)
    linen_path = linen_bridge.map_path(twin_path, nnx_to_linen)
    np.testing.assert_allclose(variable[...], linen_flat[linen_path], rtol=0, atol=1e-6,
                               err_msg=twin_path)  # the residual kernels too
  splice.set_active(twin, 'a')
  np.testing.assert_allclose(twin(ids, mask), spliced.apply(params, ids, mask, active='a'),
                             atol=1e-5, rtol=1e-5)
  splice.set_active(twin, None)
  assert not np.allclose(twin(ids, mask), spliced.apply(params, ids, mask, active='a'), atol=1e-4)
