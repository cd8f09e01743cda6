"""What every LoRA-family method must do once spliced, checked on our BERT and a tiny Llama decoder:
it lands at LoRA's default sites (query, value) and starts as the base model; merged equals
unmerged; an adapter-only checkpoint restores; one optax step moves only the method's leaves."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from adapters_jax import (
  adapter_leaves,
  add_adapter,
  merge_adapter,
  restore_adapter,
  save_adapter,
  unmerge_adapter,
)
from adapters_jax.models import DecoderLM, EncoderConfig, classification_model
from adapters_jax.splicing import trainable
from adapters_jax.train import optimizer
from tests.models.tiny_decoders import TINY_DECODERS

BERT = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                     intermediate_size=64, max_position_embeddings=32)
LORA_SITES = ('attention/query', 'attention/value')


@functools.cache
def host(family: str):
  """(model, params, (ids, mask), block prefix of the site paths) for 'bert', 'bert-scan' (layers
  under nn.scan) or 'llama'."""
  ids = jax.random.randint(jax.random.key(0), (2, 7), 1, 60)
  mask = jnp.ones_like(ids).at[1, 5:].set(0)
  if family in ('bert', 'bert-scan'):
    config = BERT.replace(scan_layers=family == 'bert-scan')
    model, prefix = classification_model(config, num_labels=3), 'encoder'
  else:
    model, prefix = DecoderLM(TINY_DECODERS[family]), 'decoder'
  params = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  return model, params, (ids, mask), prefix


@functools.cache
def spliced_host(method, family: str):
  """(model, spliced, base params, params with adapter 'a', inputs), once per method and family."""
  model, params, inputs, _ = host(family)
  spliced, new_params = add_adapter(model, params, 'a', method, jax.random.key(1), *inputs)
  return model, spliced, params, new_params, inputs


def run(spliced, params, inputs, active=None):
  """The spliced model's output, jitted (an eager apply dispatches op by op)."""
  return np.asarray(jax.jit(lambda p: spliced.apply(p, *inputs, active=active))(params))


def perturb(params, name: str, scale: float = 0.3, seed: int = 7):
  """Adds normal noise to adapter `name`'s leaves, so an identity-initialised adapter does something."""
  flat = traverse_util.flatten_dict(params, sep='/')
  key = jax.random.key(seed)
  for path, value in adapter_leaves(params, name).items():
    key, sub = jax.random.split(key)
    flat[path] = value + scale * jax.random.normal(sub, value.shape)
  return traverse_util.unflatten_dict(flat, sep='/')


def check_splices_at_lora_sites_as_identity(method, family: str, leaf_names: set[str]) -> None:
  prefix = host(family)[3]
  model, spliced, params, new_params, inputs = spliced_host(method, family)
  want = ([f'{prefix}/layers/{s}' for s in LORA_SITES] if family.endswith('scan') else
          [f'{prefix}/layer_{i}/{s}' for i in range(2) for s in LORA_SITES])
  assert [s.path for s in spliced.adapter('a').sites] == want
  assert {p.rsplit('/', 1)[1] for p in adapter_leaves(new_params, 'a')} == leaf_names
  base = np.asarray(jax.jit(model.apply)({'params': params}, *inputs))
  out = run(spliced, new_params, inputs, 'a')
  np.testing.assert_allclose(out, base, rtol=1e-5, atol=1e-6)


def check_merge_equals_unmerged(method, family: str, unmerge: bool = True) -> None:
  """Merged equals unmerged; with `unmerge`, unmerging gives the base model back."""
  _, spliced, _, params, inputs = spliced_host(method, family)
  params = perturb(params, 'a', scale=1.0)
  unmerged = run(spliced, params, inputs, 'a')
  base = run(spliced, params, inputs)
  assert np.abs(unmerged - base).max() > 1e-4 * np.abs(base).max()  # the adapter does something
  merged_spliced, merged = merge_adapter(spliced, params, 'a')
  np.testing.assert_allclose(run(merged_spliced, merged, inputs), unmerged, rtol=1e-4, atol=1e-6)
  if not unmerge:
    return
  back_spliced, back = unmerge_adapter(merged_spliced, merged, 'a')
  np.testing.assert_allclose(run(back_spliced, back, inputs), base, rtol=1e-4, atol=1e-6)


def check_checkpoint_round_trip(method, family: str, tmp_path) -> None:
  model, spliced, params, trained, inputs = spliced_host(method, family)
  trained = perturb(trained, 'a')
  path = save_adapter(tmp_path / 'ckpt', spliced, trained, 'a', base_name='tiny')
  restored_spliced, restored = restore_adapter(path, model, params, *inputs)
  assert restored_spliced.adapter('a').method == method
  want = adapter_leaves(trained, 'a')
  got = adapter_leaves(restored, 'a')
  assert got.keys() == want.keys()
  for p, v in want.items():
    np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(v))
  np.testing.assert_array_equal(run(restored_spliced, restored, inputs, 'a'),
                                run(spliced, trained, inputs, 'a'))


def check_one_step_moves_only_its_leaves(method, family: str) -> None:
  """An optax partition (adamw on the mask, zero elsewhere) driven by real gradients."""
  _, spliced, _, params, inputs = spliced_host(method, family)
  params = perturb(params, 'a')  # every adapter leaf gets a gradient
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')],
                                                             train_head=False))
  labels = jax.tree.map(lambda train: 'trainable' if train else 'frozen', mask)
  tx = optax.partition({'trainable': optimizer.adamw(1e-2), 'frozen': optax.set_to_zero()}, labels)

  def loss(p):
    return jnp.mean(jnp.square(spliced.apply(p, *inputs, active='a')))

  @jax.jit
  def step_updates(p):
    updates, _ = tx.update(jax.grad(loss)(p), tx.init(p), p)
    return updates

  updates = step_updates(params)
  moved = {p for p, u in traverse_util.flatten_dict(updates, sep='/').items() if bool(jnp.any(u != 0))}
  assert moved == set(adapter_leaves(params, 'a'))
