"""Unions (AdapterHub's `ConfigUnion`): the `mam` and `unipelt` presets have AdapterHub's parameter
counts on a BERT of the same shape; a union runs as the Stack of its members with the same weights;
UniPELT's gates compute AdapterHub's formula (float64 reference); the checkpoint round trip; a union
of zero-start members is the base model."""

import dataclasses

import adapters
import jax
import numpy as np
import pytest
import transformers
from flax import traverse_util

from adapters_jax import adapter_leaves, add_adapter, get_method, merge_adapter
from adapters_jax.methods import Bottleneck, LoRA, UnionConfig, method_from_dict
from adapters_jax.splicing.composition import Stack
from tests.methods.splice_checks import (
  BERT,
  check_checkpoint_round_trip,
  check_one_step_moves_only_its_leaves,
  host,
  perturb,
  run,
)

PRESETS = ('mam', 'unipelt')


def _adapterhub_trainable_count(preset: str) -> int:
  """Trainable parameters of AdapterHub's `preset` on the PyTorch BERT of our BERT's shape."""
  config = transformers.BertConfig(
      vocab_size=BERT.vocab_size, hidden_size=BERT.hidden_size, num_hidden_layers=BERT.num_layers,
      num_attention_heads=BERT.num_heads, intermediate_size=BERT.intermediate_size,
      max_position_embeddings=BERT.max_position_embeddings)
  model = transformers.BertModel(config)
  adapters.init(model)
  model.add_adapter('x', config=preset)
  model.train_adapter('x')
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize('preset', PRESETS)
def test_parameter_count_equals_adapterhubs(preset):
  model, params, inputs, _ = host('bert')
  _, spliced = add_adapter(model, params, 'x', get_method(preset), jax.random.key(1), *inputs)
  ours = sum(v.size for v in adapter_leaves(spliced, 'x').values())
  # UniPELT's count includes the prefix gates, Linear(hidden, 1) per layer (a missing gate: 66 fewer)
  assert ours == _adapterhub_trainable_count(preset)


def _member_leaves(union_params, name: str, member: str, sites, shared: bool) -> dict:
  """The union's leaves at `sites` (and its shared leaves when `shared`) renamed to adapter
  `member`."""
  out = {}
  for path, value in adapter_leaves(union_params, name).items():
    site = path.split(f'/adapters/{name}/')[0] if f'/adapters/{name}/' in path else None
    if site in sites or (shared and site is None and path.startswith(f'adapters/{name}/shared/')):
      out[path.replace(f'adapters/{name}/', f'adapters/{member}/')] = value
  return out


@pytest.mark.parametrize('preset', PRESETS)
def test_union_runs_as_the_stack_of_its_members(preset):
  """The union's sites and leaves are its members' own: with the same weights, the union's output
  is the Stack of the members spliced as separate adapters (and differs from the base)."""
  model, params, inputs, _ = host('bert')
  union = get_method(preset)
  spliced, with_union = add_adapter(model, params, 'u', union, jax.random.key(1), *inputs)
  with_union = perturb(with_union, 'u')
  names = [f'm{i}' for i in range(len(union.members))]
  flat = traverse_util.flatten_dict(with_union, sep='/')
  for member, name in zip(union.members, names, strict=True):
    spliced, added = add_adapter(spliced, traverse_util.unflatten_dict(flat, sep='/'), name,
                                 member, jax.random.key(2), *inputs)
    flat = traverse_util.flatten_dict(added, sep='/')
    sites = {s.path for s in spliced.adapter(name).sites}
    copied = _member_leaves(with_union, 'u', name, sites, member.kind == 'prefix_tuning')
    assert copied.keys() == adapter_leaves(added, name).keys()
    flat.update(copied)
  both = traverse_util.unflatten_dict(flat, sep='/')
  assert {s.path for s in spliced.adapter('u').sites} == {
      s.path for n in names for s in spliced.adapter(n).sites}
  union_out = run(spliced, both, inputs, 'u')
  np.testing.assert_allclose(union_out, run(spliced, both, inputs, Stack(*names)),
                             rtol=1e-5, atol=1e-6)
  assert np.abs(union_out - run(spliced, both, inputs)).max() > 1e-3


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _gate64(p, x):
  """AdapterHub: mean over positions of sigmoid(Linear(x)), per example [B, 1, 1]."""
  return _sigmoid(x @ p['gate']['gate']['kernel'] + p['gate']['gate']['bias']).mean(
      axis=1, keepdims=True)


def _float64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def test_gated_lora_and_bottleneck_equal_float64_references():
  """Gated LoRA: x A B * gate(x) (no alpha / r, as AdapterHub's gated LoRA); gated bottleneck
  (Pfeiffer, on a site's output h): h + up(relu(down(h))) * gate(h)."""
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 8)), np.float32)
  lora = LoRA(out_features=6, rank=2, alpha=2.0, use_gating=True)
  p = perturb({'adapters': {'g': lora.init(jax.random.key(1), x)['params']}}, 'g', scale=1.0)
  p = p['adapters']['g']
  q, x64 = _float64(p), x.astype(np.float64)
  want = x64 @ q['lora_a'] @ q['lora_b'] * _gate64(q, x64)
  np.testing.assert_allclose(lora.apply({'params': p}, x), want, rtol=1e-5, atol=1e-6)

  bottleneck = Bottleneck(features=8, bottleneck=4, activation='relu', use_gating=True,
                          init_scheme='zero')
  p = bottleneck.init(jax.random.key(2), x)['params']
  p = perturb({'adapters': {'g': p}}, 'g', scale=1.0)['adapters']['g']
  q = _float64(p)
  hidden = np.maximum(x64 @ q['down']['kernel'] + q['down']['bias'], 0.0)
  want = x64 + (hidden @ q['up']['kernel'] + q['up']['bias']) * _gate64(q, x64)
  np.testing.assert_allclose(bottleneck.apply({'params': p}, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('preset', PRESETS)
def test_checkpoint_round_trip(preset, tmp_path):
  method = get_method(preset)
  assert method_from_dict(method.to_dict()) == method
  check_checkpoint_round_trip(method, 'bert', tmp_path)


def test_one_step_moves_every_member_and_gate_and_nothing_else():
  check_one_step_moves_only_its_leaves(get_method('unipelt'), 'bert')


@pytest.mark.parametrize('preset', PRESETS)
def test_union_of_zero_start_members_is_the_base_model(preset):
  """A zero-length prefix, zero-init bottlenecks and LoRA's B = 0 (gates or not): the base model."""
  model, params, inputs, _ = host('bert')
  union = get_method(preset)
  members = tuple(dataclasses.replace(m, prefix_length=0) if m.kind == 'prefix_tuning' else m
                  for m in union.members)
  assert all(m.init == 'zero' for m in members if m.kind == 'bottleneck')
  spliced, with_union = add_adapter(model, params, 'u', UnionConfig(members=members),
                                    jax.random.key(1), *inputs)
  base = np.asarray(jax.jit(model.apply)({'params': params}, *inputs))
  np.testing.assert_allclose(run(spliced, with_union, inputs, 'u'), base, rtol=1e-5, atol=1e-6)


def test_members_on_the_same_site_are_refused():
  model, params, inputs, _ = host('bert')
  union = UnionConfig(members=(get_method('lora'), get_method('lora', rank=2)))
  with pytest.raises(ValueError, match='must adapt different sites'):
    add_adapter(model, params, 'u', union, jax.random.key(1), *inputs)


def test_gated_lora_refuses_merge_and_exact_average():
  model, params, inputs, _ = host('bert')
  gated = get_method('lora', use_gating=True)
  spliced, with_lora = add_adapter(model, params, 'g', gated, jax.random.key(1), *inputs)
  with pytest.raises(NotImplementedError, match='cannot be folded'):
    merge_adapter(spliced, with_lora, 'g')
  with pytest.raises(ValueError, match="how='linear'"):
    gated.check_average('exact')


def test_gates_on_the_classifiers_last_layer_average_every_position():
  """Our BERT classifier computes its last layer at position 0 only; a gate averages over every
  position, so with a gated adapter active the host computes them all (else the last layer's gates
  would read position 0 alone)."""
  model, params, inputs, _ = host('bert')
  gated = get_method('lora', use_gating=True, leave_out=(0,))  # the last layer only
  spliced, with_lora = add_adapter(model, params, 'g', gated, jax.random.key(1), *inputs)
  with_lora = perturb(with_lora, 'g', scale=1.0)
  every = lambda m, ids, mask: m.classifier(m.head_features(ids, mask, first_token_only=False),
                                           True)
  want = np.asarray(jax.jit(lambda p: spliced.apply(p, *inputs, active='g', method=every))(
      with_lora))
  np.testing.assert_allclose(run(spliced, with_lora, inputs, 'g'), want, rtol=1e-6, atol=1e-6)
