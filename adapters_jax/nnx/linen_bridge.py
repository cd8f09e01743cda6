"""Adapters trained on a Linen model restored onto its NNX twin, and the other way.

A Linen adapter checkpoint (`adapters_jax.checkpoint.save.save_adapter`) holds leaves at Linen
paths (`encoder/layer_0/attention/self/query/adapters/task/lora_a`); the NNX splice puts the same
leaves at the NNX model's paths (`layers/0/attn/query/adapters/task/lora_a`). Only the module paths
differ, so a name map from one model's module paths to the other's carries an adapter across:

    linen_to_nnx = {r'encoder/layer_(\\d+)/attention/self': r'layers/\\1/attn',
                    r'encoder/layer_(\\d+)/ffn': r'layers/\\1/mlp', 'classifier': 'head'}
    restore_linen_adapter(linen_dir, nnx_model, linen_to_nnx, ids)       # Linen -> NNX
    save_linen_adapter(linen_dir, nnx_model, 'task', nnx_to_linen, linen_params)
    spliced, params = checkpoint.restore.restore_adapter(linen_dir, linen_model, linen_params, ids)

A map is a dict `{regex or plain prefix: replacement}`: the first key that matches a leading run of
whole path components (`re.match` ending at a `/` or the end) is replaced by its replacement
(`\\1` refers to the key's groups) and the rest of the path is kept; or a function from a path to
the other model's path (None: no counterpart). Leaves keep their own names (`kernel`, `bias`,
`scale`: Linen's `Dense` / `LayerNorm` and NNX's `Linear` / `LayerNorm` agree).

The method crosses over with its sites written as the mapped site paths (exact), `leave_out` spent
(the recorded sites are what was left), and `train_also` as the mapped paths of the host leaves the
checkpoint carries (its layer norms, its head). The Linen record's base fingerprints describe the
Linen tree, so across frameworks the base is checked leaf by leaf (every mapped leaf must exist with
its shape), not by fingerprint; `save_linen_adapter` records the Linen base's fingerprints, so the
Linen restore checks them as usual. A shared leaf (Compacter's) is not carried across yet.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from adapters_jax.checkpoint.save import (
  FORMAT,
  CheckpointError,
  atomic_write,
  base_record,
  load_leaves,
  load_record,
  tree_diff,
)
from adapters_jax.methods import method_from_dict
from adapters_jax.methods.base import MethodConfig
from adapters_jax.nnx import splice
from adapters_jax.nnx.checkpoint import adapter_arrays, base_params, write_params
from adapters_jax.splicing.tree import Params, is_adapter_path
from adapters_jax.version import __version__

PathMap = Mapping[str, str] | Callable[[str], str | None]


def map_path(path: str, path_map: PathMap) -> str | None:
  """`path` (a module path or a leaf path) on the other model, or None where the map has none."""
  if callable(path_map):
    return path_map(path)
  for pattern, replacement in path_map.items():
    match = re.match(f'(?:{pattern})(?=/|$)', path)
    if match:
      return match.expand(replacement) + path[match.end():]
  return None


def map_paths(paths, path_map: PathMap, source: str) -> dict[str, str]:
  """`{path: mapped path}`; a CheckpointError names the paths (of `source`) the map misses."""
  mapped = {p: map_path(p, path_map) for p in paths}
  missing = [p for p, q in mapped.items() if q is None]
  if missing:
    raise CheckpointError(f'The path map has no counterpart for {missing[:5]} of {source}; add an '
                          'entry (a regex or prefix of these paths) to the map.')
  return mapped


def _placements(method: MethodConfig, sites: list[str]) -> list[str]:
  """Each recorded site's placement: that of the first of `method`'s rules matching it."""
  rules = method.site_rules()
  return [next(r.placement for r in rules if re.fullmatch(r.pattern, site)) for site in sites]


def translate_method(method: MethodConfig, sites: list[str], mapped_sites: list[str],
                     trained_host_paths: list[str]) -> MethodConfig:
  """`method` on the other model: exact mapped sites, no `leave_out`, `train_also` the mapped
  trained host leaves."""
  sites_rules = tuple((re.escape(target), placement)
                      for target, placement in zip(mapped_sites, _placements(method, sites),
                                                   strict=True))
  return dataclasses.replace(method, sites=sites_rules, leave_out=(),
                             train_also=tuple(re.escape(p) for p in trained_host_paths))


def restore_linen_adapter(directory: str | os.PathLike, model: nnx.Module, path_map: PathMap,
                          *sample_args, **sample_kwargs) -> dict[str, Any]:
  """Splices a Linen adapter checkpoint's adapter into NNX `model` (in place) and writes its leaves
  (and the host leaves it trained: norms, head) in at the mapped paths.

  Args:
    directory: a checkpoint of `adapters_jax.checkpoint.save.save_adapter` (Linen).
    model: the NNX twin of the Linen base, without an adapter of that name.
    path_map: Linen module paths -> `model`'s (see the module docstring).
    *sample_args, **sample_kwargs: one call of `model`, for the sites' shapes.

  Returns:
    The checkpoint's record.

  Raises:
    CheckpointError: a path has no counterpart, or the mapped leaves differ from what the NNX
      splice made (the full diff); the model is then left without the adapter.
  """
  record = load_record(directory)
  name = record['adapter']
  if not name:
    raise CheckpointError(f'{os.fspath(directory)} holds no adapter (a checkpoint of trained host '
                          'leaves); nothing to splice.')
  leaves = load_leaves(directory)
  mapped_sites = list(map_paths(record['sites'], path_map, 'the recorded sites').values())
  mapped = map_paths(leaves, path_map, 'the checkpoint\'s leaves')
  host = sorted(q for p, q in mapped.items() if not is_adapter_path(p))
  method = translate_method(method_from_dict(record['method']), record['sites'], mapped_sites, host)
  before = traverse_util.flatten_dict(base_params(model), sep='/')
  # The seed does not matter: every leaf is overwritten below.
  splice.add_adapter(model, name, method, jax.random.key(0), *sample_args, **sample_kwargs)
  state = nnx.state(model, nnx.Param)
  flat = nnx.to_flat_state(state)
  params = {'/'.join(str(k) for k in path): variable for path, variable in flat}
  expected = dict(adapter_arrays(model, name))
  expected.update({p: params[p][...] for p in host if p in params})
  found = {mapped[p]: leaf for p, leaf in leaves.items()}
  problems = tree_diff(expected, found)
  if problems:
    write_params(model, before)  # the kernels a PiSSA/OLoRA splice replaced by residuals
    splice.detach_adapter(model, name)
    raise CheckpointError(f'Linen checkpoint {os.fspath(directory)} does not fit this NNX model '
                          'through the path map:\n  ' + '\n  '.join(problems))
  for path, leaf in found.items():
    variable = params[path]
    variable[...] = jnp.asarray(np.asarray(leaf), variable[...].dtype)
  nnx.update(model, nnx.from_flat_state(flat))
  return record


def save_linen_adapter(directory: str | os.PathLike, model: nnx.Module, name: str,
                       path_map: PathMap, linen_params: Params, base_name: str = '',
                       extra: Mapping[str, Any] | None = None) -> str:
  """Saves NNX adapter `name` as a Linen adapter checkpoint of the Linen twin, for
  `adapters_jax.checkpoint.restore.restore_adapter`.

  Args:
    directory: destination (replaced only once completely written).
    model: the adapted NNX model.
    name: the adapter to save.
    path_map: `model`'s module paths -> the Linen model's.
    linen_params: the Linen base's params (no adapters), whose shapes and weights are recorded
      so the Linen restore checks the base it is restored onto.
    base_name, extra: recorded, as by the Linen `save_adapter`.

  Returns:
    The checkpoint directory.
  """
  spec = splice.find_adapter(model, name)
  if spec.merged:
    raise ValueError(f'Adapter {name!r} is merged into the base weights; unmerge it before saving.')
  sites = [site.path for site in spec.sites]
  mapped_sites = list(map_paths(sites, path_map, 'the adapter\'s sites').values())
  leaves = adapter_arrays(model, name)
  mapped = map_paths(leaves, path_map, 'the adapter\'s leaves')
  linen_leaves = {mapped[p]: leaf for p, leaf in leaves.items()}
  method = translate_method(spec.method, sites, mapped_sites, [])
  record = {
      'format': FORMAT,
      'library_version': __version__,
      'adapter': name,
      'method': method.to_dict(),
      'sites': mapped_sites,
      'base': base_record(linen_params, base_name, sorted(linen_leaves)),
      'trained_paths': sorted(linen_leaves),
      'extra': dict(extra or {}),
  }
  directory = os.path.abspath(os.fspath(directory))
  atomic_write(directory, traverse_util.unflatten_dict(jax.device_get(linen_leaves), sep='/'),
               record)
  return directory
