"""Prefix tuning's params in the layer-stacked layout of AdapterHub and PEFT, and back.

AdapterHub keeps one module per location (`self_prefix`, `encoder_prefix`, `cross_prefix`):

    prefix_tuning.prefix_tunings.<name>.<location>.wte.weight              [P, width]
                                             .control_trans.0.weight       [bottleneck, width]
                                             .control_trans.0.bias         [bottleneck]
                                             .control_trans.2.weight       [L * 2 * width, bottleneck]
                                             .control_trans.2.bias         [L * 2 * width]
    (flat: `.control_trans` [P * L * 2 * width])

PEFT's `prompt_embeddings` (prefix tuning, either `prefix_projection`) is the flat form
[P, L * 2 * width]. In both, layer l's keys are the columns `[2l * width, (2l + 1) * width)` and its
values the next `width` (the output viewed as [P, L * 2, heads, head_dim]). Here the last Linear and
the flat prefixes are held per site (`adapters_jax.methods.prefix_tuning`); these functions move
between the two. Locations are ours (`site_location`); AdapterHub names an encoder-only model's
self-attention `self_prefix` where ours says `encoder_prefix` (pass `locations=` to rename).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from adapters_jax.interop.naming import InteropError
from adapters_jax.methods.prefix_tuning import site_location
from adapters_jax.splicing.tree import ADAPTERS_KEY, SHARED_KEY, adapter_path


def _layers(spec) -> dict[str, list]:
  """`{location: [(layer, site), ...]}` sorted by layer; unscanned layers only."""
  if any(dims for dims in spec.stack_dims) or any(s.layer is None for s in spec.sites):
    raise InteropError('Prefix layouts map unscanned layers only; load the model with '
                       'scan_layers=False.')
  out: dict[str, list] = {}
  for site in spec.sites:
    out.setdefault(site_location(site.path), []).append((site.layer, site))
  return {k: sorted(v, key=lambda item: item[0]) for k, v in out.items()}


def to_stacked(spec, params: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """`{location: tensors}` of adapter `spec` in the stacked layout (numpy, `[in, out]` kernels).

  Flat: `{'prefixes': [P, L * 2 * width]}`; reparameterised: `{'embedding', 'hidden_kernel',
  'hidden_bias', 'output_kernel' [bottleneck, L * 2 * width], 'output_bias'}`. Layers without a
  site (leave_out) are zeros. A gated prefix is refused: the layout has no place for its gates.
  """
  if spec.method.use_gating:
    raise InteropError(f'Adapter {spec.name!r} is a gated prefix (use_gating=True); the stacked '
                       'prefix layout holds no gates: use an ungated prefix.')
  flat = traverse_util.flatten_dict(params, sep='/')
  name, out = spec.name, {}
  for location, layers in _layers(spec).items():
    n_layers, width = layers[-1][0] + 1, layers[0][1].in_features
    column = lambda layer, width=width: slice(2 * width * layer, 2 * width * (layer + 1))
    if spec.method.flat:
      stacked = np.zeros((spec.method.prefix_length, n_layers * 2 * width), np.float32)
      for layer, site in layers:
        stacked[:, column(layer)] = flat[adapter_path(site.path, name, 'prefixes')]
      out[location] = {'prefixes': stacked}
      continue
    shared = f'{ADAPTERS_KEY}/{name}/{SHARED_KEY}/{location}'
    kernel = np.zeros((spec.method.bottleneck_size, n_layers * 2 * width), np.float32)
    bias = np.zeros((n_layers * 2 * width,), np.float32)
    for layer, site in layers:
      kernel[:, column(layer)] = flat[adapter_path(site.path, name, 'output/kernel')]
      bias[column(layer)] = flat[adapter_path(site.path, name, 'output/bias')]
    out[location] = {'embedding': np.asarray(flat[f'{shared}/embedding']),
                     'hidden_kernel': np.asarray(flat[f'{shared}/hidden/kernel']),
                     'hidden_bias': np.asarray(flat[f'{shared}/hidden/bias']),
                     'output_kernel': kernel, 'output_bias': bias}
  return out


def from_stacked(spec, params: Mapping[str, Any],
                 stacked: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """`params` with adapter `spec`'s leaves set from the stacked layout (as `to_stacked` returns).

  Raises:
    InteropError: a location or tensor is missing, or a shape differs (every problem listed).
  """
  flat = dict(traverse_util.flatten_dict(params, sep='/'))
  name, problems = spec.name, []

  def put(path, value):
    if path not in flat:
      problems.append(f'{path}: no such leaf')
    elif tuple(flat[path].shape) != tuple(value.shape):
      problems.append(f'{path}: shape {tuple(value.shape)}, expected {tuple(flat[path].shape)}')
    else:
      flat[path] = np.asarray(value, np.float32)

  for location, layers in _layers(spec).items():
    tensors = stacked.get(location)
    if tensors is None:
      problems.append(f'location {location!r} missing (given: {sorted(stacked)})')
      continue
    width = layers[0][1].in_features
    column = lambda layer, width=width: slice(2 * width * layer, 2 * width * (layer + 1))
    keys = ('prefixes',) if spec.method.flat else ('embedding', 'hidden_kernel', 'hidden_bias',
                                                    'output_kernel', 'output_bias')
    missing = [k for k in keys if k not in tensors]
    if missing:
      problems.append(f'{location}: tensors {missing} missing')
      continue
    if spec.method.flat:
      for layer, site in layers:
        put(adapter_path(site.path, name, 'prefixes'), tensors['prefixes'][:, column(layer)])
      continue
    shared = f'{ADAPTERS_KEY}/{name}/{SHARED_KEY}/{location}'
    put(f'{shared}/embedding', tensors['embedding'])
    put(f'{shared}/hidden/kernel', tensors['hidden_kernel'])
    put(f'{shared}/hidden/bias', tensors['hidden_bias'])
    for layer, site in layers:
      put(adapter_path(site.path, name, 'output/kernel'), tensors['output_kernel'][:, column(layer)])
      put(adapter_path(site.path, name, 'output/bias'), tensors['output_bias'][column(layer)])
  if problems:
    raise InteropError(f'The prefix tensors do not fit adapter {name!r}:\n  '
                       + '\n  '.join(problems))
  return traverse_util.unflatten_dict(flat, sep='/')


def from_adapterhub(state: Mapping[str, Any], name: str, prefix_length: int,
                    locations: Mapping[str, str] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """The stacked layout from an AdapterHub state dict (`{key: array}`, torch `[out, in]` weights).

  Args:
    state: AdapterHub's tensors (a model's `state_dict()` or a saved adapter's weights).
    name: the adapter's name in AdapterHub.
    prefix_length: P (reshapes the flat form).
    locations: `{AdapterHub location: ours}` renames (e.g. `{'self_prefix': 'encoder_prefix'}` for
      an encoder-only model).
  """
  locations = dict(locations or {})
  pattern = f'prefix_tuning.prefix_tunings.{name}.'
  out: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state.items():
    start = key.find(pattern)
    if start < 0 or (start and not key[:start].endswith('.')):
      continue
    theirs, _, leaf = key[start + len(pattern):].partition('.')
    tensors = out.setdefault(locations.get(theirs, theirs), {})
    value = np.asarray(value, np.float32)
    if leaf == 'wte.weight':
      tensors['embedding'] = value
    elif leaf == 'control_trans.0.weight':
      tensors['hidden_kernel'] = value.T
    elif leaf == 'control_trans.0.bias':
      tensors['hidden_bias'] = value
    elif leaf == 'control_trans.2.weight':
      tensors['output_kernel'] = value.T
    elif leaf == 'control_trans.2.bias':
      tensors['output_bias'] = value
    elif leaf == 'control_trans':
      tensors['prefixes'] = value.reshape(prefix_length, -1)
  if not out:
    raise InteropError(f'No AdapterHub prefix tensors of adapter {name!r} (keys containing '
                       f'{pattern!r}).')
  return out
