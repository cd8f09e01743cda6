"""Many adapters over one base: restoring several checkpoints side by side, averaging adapters.

A task adapter checkpoint (from `experiments.train`) holds the adapter and the task head it was
trained with. Over one base, the adapters sit side by side in the tree (`<site>/adapters/<name>`),
while each head is kept apart, keyed by adapter name (`restore_adapters` returns them): the base
tree has one `classifier`, and tasks differ in their label sets.

    spliced, params, heads = restore_adapters([dir_a, dir_b], model, base_params, ids, mask, types,
                                              deterministic=True)
    out = spliced.apply(params, ids, mask, types, active=PerExample('rt', 'tweets'),
                        adapter_index=index)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax import checkpoint, splice
from adapters_jax.checkpoint import CheckpointError
from adapters_jax.methods import (
  BottleneckConfig,
  CompacterConfig,
  IA3Config,
  LoRAConfig,
  method_from_dict,
  replace_fields,
)
from adapters_jax.sites import HEAD_PARAMS

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RestoredAdapter:
  """One restored checkpoint: its name, JSON record and task head leaves (`{path: array}`)."""

  name: str
  record: dict[str, Any]
  head: dict[str, np.ndarray]


def adapter_digest(params: Params, name: str) -> str:
  """sha256 over adapter `name`'s leaves (paths, shapes, dtypes and bytes): which weights these are."""
  digest = hashlib.sha256()
  for path, leaf in sorted(splice.adapter_leaves(params, name).items()):
    leaf = np.asarray(leaf)
    digest.update(f'{path}:{leaf.shape}:{leaf.dtype.name};'.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def restore_adapters(directories: Sequence[str | os.PathLike], host: Any, params: Params,
                     *sample_args, check_base: bool = True, rename: Sequence[str] | None = None,
                     **sample_kwargs) -> tuple[splice.Spliced, Params, dict[str, RestoredAdapter]]:
  """Splices several adapter checkpoints into one base; heads are returned, not written.

  Args:
    directories: adapter checkpoints (`save_adapter`, e.g. `<workdir>/best`).
    host: the base Linen model or a `Spliced` one.
    params: the base params (its own head stays as it is).
    *sample_args, **sample_kwargs: one host call's arguments, for the splice's shapes.
    check_base: refuse checkpoints trained on a base with other parameter shapes.
    rename: names to give the adapters (default: the recorded names; they must differ).

  Returns:
    The spliced model, the params with every adapter's leaves restored, and per adapter name its
    `RestoredAdapter` (record and head leaves).

  Raises:
    CheckpointError: another base, a tree that does not fit, two adapters with one name, or a
      checkpoint that also trained shared base weights (e.g. Houlsby's layer norms): over one base
      those would apply to every adapter, so train such adapters with `train_also=()`.
  """
  spliced = host if isinstance(host, splice.Spliced) else splice.Spliced(host)
  restored: dict[str, RestoredAdapter] = {}
  base_flat = traverse_util.flatten_dict(params, sep='/')
  for i, directory in enumerate(directories):
    record = checkpoint.load_record(directory)
    if not record.get('adapter'):
      raise CheckpointError(f'{directory} holds no adapter (a full fine-tuning or head-only run); '
                            'only adapter checkpoints share a base.')
    name = rename[i] if rename else record['adapter']
    if name in spliced.names:
      raise CheckpointError(f'Two adapters are named {name!r} ({directory}); pass rename=[...] to '
                            'give each checkpoint its own name.')
    leaves = checkpoint.load_leaves(directory)
    if check_base and record['base']['fingerprint'] != _fingerprint_with_head(base_flat, leaves):
      raise CheckpointError(f'Checkpoint {directory} was trained on base '
                            f'{record["base"]["name"]!r} with other parameter shapes than this '
                            'model (heads aside); pass check_base=False to restore anyway.')
    recorded = record['adapter']
    base_leaves = [p for p in leaves if not splice.is_adapter_path(p)
                   and not re.fullmatch(HEAD_PARAMS, p)]
    if base_leaves:
      raise CheckpointError(
          f'Checkpoint {directory} also trained base weights {base_leaves[:4]}; several adapters '
          'over one base cannot each change them. Train the adapter with train_also=() (e.g. '
          "--config.method_options.train_also='()') or use pfeiffer / lora.")
    method = method_from_dict(record['method'])
    spliced, params = splice.add_adapter(spliced, params, name, method, jax.random.key(0),
                                         *sample_args, **sample_kwargs)
    adapter = {_rename(p, recorded, name): v for p, v in leaves.items()
               if splice.is_adapter_path(p, recorded)}
    flat = traverse_util.flatten_dict(params, sep='/')
    expected = {p: v for p, v in flat.items() if splice.is_adapter_path(p, name)}
    problems = checkpoint.tree_diff(expected, adapter)
    if problems:
      raise CheckpointError(f'Checkpoint {directory} does not fit this model:\n  '
                            + '\n  '.join(problems))
    params = checkpoint.overwrite_leaves(params, adapter)
    head = {p: v for p, v in leaves.items() if re.fullmatch(HEAD_PARAMS, p)}
    restored[name] = RestoredAdapter(name=name, record=record, head=head)
  return spliced, params, restored


def _fingerprint_with_head(base_flat: dict[str, Any], leaves: dict[str, Any]) -> str:
  """The base fingerprint as the checkpoint's run saw it: this base, with the checkpoint's head
  (tasks differ in their number of labels, which is not a different base)."""
  flat = {p: v for p, v in base_flat.items() if not re.fullmatch(HEAD_PARAMS, p)}
  flat.update({p: v for p, v in leaves.items() if re.fullmatch(HEAD_PARAMS, p)})
  return checkpoint.base_fingerprint(traverse_util.unflatten_dict(flat, sep='/'))


def _rename(path: str, old: str, new: str) -> str:
  parts = path.split('/')
  for i, part in enumerate(parts[:-1]):
    if part == splice.ADAPTERS_KEY and parts[i + 1] == old:
      parts[i + 1] = new
  return '/'.join(parts)


def with_head(params: Params, head: dict[str, Any]) -> Params:
  """`params` with a restored head's leaves written in (their shapes must match the model's)."""
  return checkpoint.overwrite_leaves(params, head, what='task head')


# --------------------------------------------------------------------------------------------------
# Averaging parameters.


def average_adapter(spliced: splice.Spliced, params: Params, name: str, sources: Sequence[str],
                    weights: Sequence[float] | None = None,
                    how: str = 'exact') -> tuple[splice.Spliced, Params]:
  """A new adapter `name` whose parameters combine `sources` (weights normalised to sum 1).

  how='exact': LoRA: A = [A_1 ... A_n] (ranks concatenated), B = [c_1 B_1; ...; c_n B_n] with
    c_i = w_i (alpha_i / r_i) and alpha = rank, so x A B = sum_i w_i LoRA_i(x) exactly.
    (IA)3: scale = sum_i w_i scale_i (the rescaling is linear in it): exact as well.
  how='linear': every leaf is the weighted average of the sources' leaves (adapter-hub's
    `average_adapter(..., combine_strategy='linear')`); for LoRA this is *not* the average of the
    outputs (A B is bilinear), for bottlenecks only an interpolation (meaningful when the sources
    share an initialisation). Needs identical configs.

  Raises:
    ValueError: unknown `how`, mixed methods or shapes, or a method where the combination makes no
      sense (Compacter's shared rules, fusion layers).
  """
  if how not in ('exact', 'linear'):
    raise ValueError(f"Unknown how={how!r}; valid: 'exact', 'linear'.")
  specs = [spliced.adapter(s) for s in sources]
  weights = list(weights) if weights is not None else [1.0] * len(specs)
  if len(weights) != len(specs) or abs(sum(weights)) < 1e-12:
    raise ValueError(f'average_adapter needs one weight per source with a nonzero sum, got '
                     f'{weights} for {list(sources)}.')
  weights = [w / sum(weights) for w in weights]
  kinds = {type(s.method) for s in specs}
  if len(kinds) != 1:
    raise ValueError(f'average_adapter combines adapters of one method; got '
                     f'{sorted(s.method.kind for s in specs)}.')
  method = specs[0].method
  if isinstance(method, CompacterConfig) or not isinstance(
      method, (LoRAConfig, IA3Config, BottleneckConfig)):
    raise ValueError(f'Averaging {method.kind} adapters is not supported (only lora, ia3 and '
                     'bottleneck adapters); combine them at apply time with Average(...).')
  if how == 'exact' and isinstance(method, BottleneckConfig):
    raise ValueError("Bottleneck adapters are nonlinear: no parameter average equals the output "
                     "average. Use how='linear' (an interpolation) or Average(...) at apply time.")
  if [s.sites for s in specs].count(specs[0].sites) != len(specs):
    raise ValueError('average_adapter needs the sources at the same sites; '
                     f'{[len(s.sites) for s in specs]} sites.')
  flat = traverse_util.flatten_dict(params, sep='/')
  new_flat = dict(flat)
  if how == 'exact' and isinstance(method, LoRAConfig):
    rank = sum(s.method.rank for s in specs)
    new_method = replace_fields(method, rank=rank, alpha=float(rank),
                                dropout=max(s.method.dropout for s in specs))
    for site in specs[0].sites:
      a = jnp.concatenate([flat[f'{site.path}/adapters/{s.name}/lora_a'] for s in specs], axis=-1)
      b = jnp.concatenate([w * (s.method.alpha / s.method.rank)
                           * flat[f'{site.path}/adapters/{s.name}/lora_b']
                           for w, s in zip(weights, specs, strict=True)], axis=-2)
      new_flat[f'{site.path}/adapters/{name}/lora_a'] = a
      new_flat[f'{site.path}/adapters/{name}/lora_b'] = b
  else:
    new_method = method
    if how == 'linear' and len({s.method for s in specs}) != 1:
      raise ValueError("how='linear' needs identical adapter configs; "
                       f'got {[s.method for s in specs]}.')
    prefix = {s.name: [p for p in flat if splice.is_adapter_path(p, s.name)] for s in specs}
    for path in prefix[specs[0].name]:
      leaves = [flat[_rename(path, specs[0].name, s.name)] for s in specs]
      new_flat[_rename(path, specs[0].name, name)] = sum(
          w * leaf for w, leaf in zip(weights, leaves, strict=True))
  if name in spliced.names:
    raise ValueError(f'An adapter named {name!r} is already spliced.')
  spec = dataclasses.replace(specs[0], name=name, method=new_method, merged=False)
  return (dataclasses.replace(spliced, adapters=spliced.adapters + (spec,)),
          traverse_util.unflatten_dict(new_flat, sep='/'))
