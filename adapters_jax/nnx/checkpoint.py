"""Adapter-only Orbax checkpoints of NNX models, in the Linen checkpoints' format.

The directory is `adapters_jax.checkpoint.save`'s: an Orbax `params` item with the adapter's leaves
only (at their graph paths, `<site path>/adapters/<name>/...`, the Linen layout) and a JSON `record`
(format, adapter name, method config, site paths, the base's shape and weights fingerprints). The
base's leaves keep their paths when adapters are spliced (`adapters_jax.nnx.adapted_site`), so the
fingerprints of a freshly built model and of a trained, adapted one agree.

    save_adapter('/tmp/lora', model, 'lora', base_name='tiny')
    fresh = MyModel(..., rngs=nnx.Rngs(0))
    restore_adapter('/tmp/lora', fresh, ids)          # spliced and filled in, in place
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from adapters_jax.checkpoint.restore import check_base_of
from adapters_jax.checkpoint.save import (
  FORMAT,
  CheckpointError,
  atomic_write,
  base_fingerprint,
  base_record,
  load_leaves,
  load_record,
  tree_diff,
  unsampled_paths,
)
from adapters_jax.methods import method_from_dict
from adapters_jax.nnx import fusion, splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.splicing.tree import is_adapter_path
from adapters_jax.version import __version__


def _flat(state: nnx.State) -> dict[str, Any]:
  """`{'/'-joined path: array}` of a state."""
  return {'/'.join(str(k) for k in path): value[...] for path, value in nnx.to_flat_state(state)}


def base_params(model: nnx.Module) -> dict[str, Any]:
  """The base's params (every `nnx.Param` but the adapters') as a nested dict with string keys."""
  state = nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam)))
  return traverse_util.unflatten_dict(_flat(state), sep='/')


def adapter_arrays(model: nnx.Module, name: str) -> dict[str, Any]:
  """`{path: array}` of adapter `name`'s leaves (a leaf shared by its sites appears once)."""
  return {p: v for p, v in _flat(nnx.state(model, AdapterParam)).items() if is_adapter_path(p, name)}


def save_adapter(directory: str | os.PathLike, model: nnx.Module, name: str, base_name: str = '',
                 extra: Mapping[str, Any] | None = None) -> str:
  """Saves adapter `name`'s leaves and their record to `directory` (replaced only once written).

  Returns:
    The checkpoint directory.
  """
  spec = splice.find_adapter(model, name)
  if spec.merged:
    raise ValueError(f'Adapter {name!r} is merged into the base weights; unmerge it before saving.')
  leaves = adapter_arrays(model, name)
  record = {
      'format': FORMAT,
      'library_version': __version__,
      'adapter': name,
      'method': spec.method.to_dict(),
      'sites': [site.path for site in spec.sites],
      'trained_paths': sorted(leaves),
      'extra': dict(extra or {}),
  }
  # PiSSA/OLoRA's residual kernels are not the base's weights: `unsampled_paths` leaves them out.
  record['base'] = base_record(base_params(model), base_name, unsampled_paths(record))
  directory = os.path.abspath(os.fspath(directory))
  tree = traverse_util.unflatten_dict(jax.device_get(leaves), sep='/')
  atomic_write(directory, tree, record)
  return directory


def restore_adapter(directory: str | os.PathLike, model: nnx.Module, *sample_args,
                    check_base: bool = True, strict: bool = False, base_name: str = '',
                    **sample_kwargs) -> dict[str, Any]:
  """Splices the recorded adapter into `model` (in place) and writes the checkpoint's leaves in:
  the adapter's, and the host leaves it trained (a head, layer norms: an `nnx:` run's `best/`).

  Args:
    directory: a checkpoint made by `save_adapter` (NNX) with this model's site paths.
    model: the base model, freshly built or loaded (without an adapter of that name); for a
      fusion's checkpoint, with the fused adapters spliced (restored) already.
    *sample_args, **sample_kwargs: one call of the model, for the sites' shapes (see `add_adapter`).
    check_base: refuse a base whose parameter shapes differ from the recorded ones.
    strict: refuse a base with the same shapes but other weights (else a warning).
    base_name: this base's name, for the messages.

  Returns:
    The checkpoint's record.

  Raises:
    CheckpointError: the base does not fit, or the leaves differ from the spliced adapter's (the
      full diff: missing, unexpected, mis-shaped); the model is left without the adapter.
  """
  record = load_record(directory)
  name = record['adapter']
  if name is None:
    raise CheckpointError(f'{directory} holds no adapter (a checkpoint of trained host leaves).')
  base = base_params(model)
  check_base_of(directory, record, base, base_fingerprint(base), check_base, strict, base_name)
  leaves = load_leaves(directory)
  # The seed does not matter: every leaf is overwritten below.
  method = method_from_dict(record['method'])
  if method.is_fusion:  # over adapters restored (or spliced) already
    fusion.add_fusion(model, method.adapters, jax.random.key(0), method, name)
  else:  # PiSSA/OLoRA: the splice rebuilds the residual kernels from this base, as when trained
    splice.add_adapter(model, name, method, jax.random.key(0), *sample_args, **sample_kwargs)
  expected = adapter_arrays(model, name)
  host = _flat(nnx.state(model, nnx.All(nnx.Param, nnx.Not(AdapterParam))))
  expected.update({p: host[p] for p in leaves if p in host})
  problems = tree_diff(expected, leaves)
  if problems:
    # The kernels a PiSSA/OLoRA splice replaced by residuals go back first.
    write_params(model, traverse_util.flatten_dict(base, sep='/'))
    splice.detach_adapter(model, name)
    raise CheckpointError(f'Checkpoint {os.fspath(directory)} does not fit the adapter spliced '
                          'from its record:\n  ' + '\n  '.join(problems))
  write_params(model, leaves)
  return record


def write_params(model: nnx.Module, leaves: Mapping[str, Any]) -> None:
  """Writes `{'/'-joined path: array}` into the model's `nnx.Param`s at those paths (in place, in
  their dtypes); other paths are left alone."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, variable in flat:
    key = '/'.join(str(k) for k in path)
    if key in leaves:
      variable[...] = jnp.asarray(np.asarray(leaves[key]), variable[...].dtype)
  nnx.update(model, nnx.from_flat_state(flat))
