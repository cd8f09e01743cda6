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
values the next `width` (the output viewed as [P, L * 2, heads, head_dim]), l counting only the
layers that have a prefix (AdapterHub's `leave_out` drops layers from the stack). Here the last
Linear and the flat prefixes are held per site (`adapters_jax.methods.prefix_tuning`); these
functions move between the two. Locations are ours (`site_location`); AdapterHub names an encoder-only model's
self-attention `self_prefix` where ours says `encoder_prefix` (pass `locations=` to rename).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from adapters_jax.interop.naming import InteropError
from adapters_jax.methods.prefix_tuning import site_location
from adapters_jax.splicing.sites import layer_index
from adapters_jax.splicing.tree import ADAPTERS_KEY, SHARED_KEY, adapter_path


def _column(width: int, index: int) -> slice:
  """The columns of the `index`-th stacked layer: its keys, then its values."""
  return slice(2 * width * index, 2 * width * (index + 1))


def _site_layers(spec) -> dict[str, list[str]]:
  """`{location: [site path, ...]}` of adapter `spec`, sorted by layer; unscanned layers only."""
  if any(dims for dims in spec.stack_dims) or any(s.layer is None for s in spec.sites):
    raise InteropError('Prefix layouts map unscanned layers only; load the model with '
                       'scan_layers=False.')
  return sites_by_location(s.path for s in spec.sites)


def sites_by_location(paths) -> dict[str, list[str]]:
  """`{location: [site path, ...]}` of `keys_values` site paths, each list sorted by layer: the
  order of the stacked layout (AdapterHub counts only the layers that have a prefix)."""
  out: dict[str, list[str]] = {}
  for path in paths:
    out.setdefault(site_location(path), []).append(path)
  return {k: sorted(v, key=layer_index) for k, v in out.items()}


def stack_leaves(leaves: Mapping[str, np.ndarray], name: str,
                 flat: bool) -> dict[str, dict[str, np.ndarray]]:
  """`{location: tensors}` in the stacked layout from adapter `name`'s leaves `{our path: array}`.

  Flat: `{'prefixes': [P, L * 2 * width]}`; reparameterised: `{'embedding', 'hidden_kernel',
  'hidden_bias', 'output_kernel' [bottleneck, L * 2 * width], 'output_bias'}` (`[in, out]`
  kernels); L counts the location's sites, in layer order.
  """
  marker = f'/{ADAPTERS_KEY}/{name}/'
  leaf = 'prefixes' if flat else 'output/kernel'
  sites = [p[:-len(marker + leaf)] for p in leaves if p.endswith(marker + leaf)]
  out = {}
  for location, paths in sites_by_location(sites).items():
    if flat:
      out[location] = {'prefixes': np.concatenate([leaves[adapter_path(p, name, 'prefixes')]
                                                   for p in paths], axis=1)}
      continue
    shared = f'{ADAPTERS_KEY}/{name}/{SHARED_KEY}/{location}'
    out[location] = {
        'embedding': np.asarray(leaves[f'{shared}/embedding']),
        'hidden_kernel': np.asarray(leaves[f'{shared}/hidden/kernel']),
        'hidden_bias': np.asarray(leaves[f'{shared}/hidden/bias']),
        'output_kernel': np.concatenate([leaves[adapter_path(p, name, 'output/kernel')] for p in paths],
                                        axis=1),
        'output_bias': np.concatenate([leaves[adapter_path(p, name, 'output/bias')] for p in paths])}
  return {k: {n: np.asarray(v, np.float32) for n, v in t.items()} for k, t in out.items()}


def unstack_leaves(stacked: Mapping[str, Mapping[str, np.ndarray]], name: str, flat: bool,
                   sites: Mapping[str, list[str]]) -> dict[str, np.ndarray]:
  """Adapter `name`'s leaves `{our path: array}` from the stacked layout; `sites` gives each
  location's site paths in stacked order (`sites_by_location`).

  Raises:
    InteropError: a location or tensor is missing, or the columns do not split into the sites
      (every problem listed).
  """
  leaves, problems = {}, []
  keys = ('prefixes',) if flat else ('embedding', 'hidden_kernel', 'hidden_bias', 'output_kernel',
                                     'output_bias')
  for location, paths in sites.items():
    tensors = stacked.get(location)
    if tensors is None:
      problems.append(f'location {location!r} missing (given: {sorted(stacked)})')
      continue
    missing = [k for k in keys if k not in tensors]
    if missing:
      problems.append(f'{location}: tensors {missing} missing')
      continue
    columns = tensors['prefixes' if flat else 'output_bias'].shape[-1]
    if columns % (2 * len(paths)):
      problems.append(f'{location}: {columns} columns do not split into keys and values of '
                      f'{len(paths)} layers')
      continue
    width = columns // (2 * len(paths))
    for index, path in enumerate(paths):
      if flat:
        leaves[adapter_path(path, name, 'prefixes')] = tensors['prefixes'][:, _column(width, index)]
      else:
        leaves[adapter_path(path, name, 'output/kernel')] = tensors['output_kernel'][:, _column(width, index)]
        leaves[adapter_path(path, name, 'output/bias')] = tensors['output_bias'][_column(width, index)]
    if not flat:
      shared = f'{ADAPTERS_KEY}/{name}/{SHARED_KEY}/{location}'
      leaves[f'{shared}/embedding'] = tensors['embedding']
      leaves[f'{shared}/hidden/kernel'] = tensors['hidden_kernel']
      leaves[f'{shared}/hidden/bias'] = tensors['hidden_bias']
  if problems:
    raise InteropError(f'The prefix tensors do not fit adapter {name!r}:\n  ' + '\n  '.join(problems))
  return {k: np.ascontiguousarray(v, np.float32) for k, v in leaves.items()}


def to_stacked(spec, params: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """`{location: tensors}` of adapter `spec` (spliced in `params`) in the stacked layout
  (`stack_leaves`)."""
  if spec.method.use_gating:
    raise InteropError(f'Adapter {spec.name!r} is a gated prefix (use_gating=True); the stacked '
                       'prefix layout holds no gates: use an ungated prefix.')
  _site_layers(spec)
  marker = f'/{ADAPTERS_KEY}/{spec.name}/'
  leaves = {p: np.asarray(v) for p, v in traverse_util.flatten_dict(params, sep='/').items()
            if marker in f'/{p}'}
  return stack_leaves(leaves, spec.name, spec.method.flat)


def from_stacked(spec, params: Mapping[str, Any],
                 stacked: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
  """`params` with adapter `spec`'s leaves set from the stacked layout (as `to_stacked` returns).

  Raises:
    InteropError: a location or tensor is missing, or a shape differs (every problem listed).
  """
  flat = dict(traverse_util.flatten_dict(params, sep='/'))
  leaves = unstack_leaves(stacked, spec.name, spec.method.flat, _site_layers(spec))
  problems = [f'{path}: no such leaf' if path not in flat else
              f'{path}: shape {tuple(value.shape)}, expected {tuple(flat[path].shape)}'
              for path, value in leaves.items()
              if path not in flat or tuple(flat[path].shape) != tuple(value.shape)]
  if problems:
    raise InteropError(f'The prefix tensors do not fit adapter {spec.name!r}:\n  '
                       + '\n  '.join(problems))
  flat.update(leaves)
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
