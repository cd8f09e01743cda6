"""The adapter subtree of a host's params: its keys, what one spliced adapter is, leaf selection.

Adapters are grafted into the host's own param tree:

    <site path>/adapters/<name>/...     e.g. encoder/layer_0/attention/output/adapters/sst2/up/kernel
    adapters/<name>/shared/...          params every site of <name> shares (Compacter's rule)

Leaves are named by their `/`-joined paths (`flax.traverse_util.flatten_dict(..., sep='/')`). This
module imports nothing else of the library at run time: every floor above reads the tree through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from flax import traverse_util

if TYPE_CHECKING:
  from adapters_jax.methods.base import MethodConfig, SiteInfo

ADAPTERS_KEY = 'adapters'
SHARED_KEY = 'shared'

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  """One named adapter spliced into a host.

  Attributes:
    name: the adapter's name (its key in the tree).
    method: the method config it was built from.
    sites: the matched sites, in host call order.
    stack_dims: per site, the leading (scan) dims its grafted params carry.
    merged: True after `merge_adapter` folded it into the base weights.
  """

  name: str
  method: MethodConfig
  sites: tuple[SiteInfo, ...]
  stack_dims: tuple[tuple[int, ...], ...]
  merged: bool = False


def find_spec(adapters: Sequence[AdapterSpec], name: str) -> AdapterSpec:
  """The spec called `name`.

  Raises:
    KeyError: no such adapter; the message lists the spliced ones.
  """
  for spec in adapters:
    if spec.name == name:
      return spec
  raise KeyError(f'No adapter named {name!r}; spliced adapters: {[a.name for a in adapters]}.')


def check_name(name: str) -> None:
  """Adapter names are tree keys: non-empty, without `/`."""
  if not isinstance(name, str) or not name or '/' in name:
    raise ValueError(f'Adapter names must be non-empty strings without "/": {name!r}.')


def adapter_path(site_path: str, name: str, leaf_path: str) -> str:
  """`<site>/adapters/<name>/<leaf>`: where a site's grafted leaf lives."""
  return f'{site_path}/{ADAPTERS_KEY}/{name}/{leaf_path}'


def shared_path(name: str, leaf_path: str) -> str:
  """`adapters/<name>/shared/<leaf>`: where a leaf every site of `name` shares lives."""
  return f'{ADAPTERS_KEY}/{name}/{SHARED_KEY}/{leaf_path}'


def adapter_pattern(name: str, leaf: str = '.*') -> str:
  """A whole-name regex matching the leaf paths of adapter `name` (for trainable rules): every one,
  or those whose path inside the adapter's subtree fully matches the regex `leaf`."""
  return rf'(.*/)?{ADAPTERS_KEY}/{re.escape(name)}/(?:{leaf})'


def path_adapter(path: str) -> str | None:
  """The adapter a `/`-joined leaf path belongs to, or None for a host leaf."""
  parts = path.split('/')
  for i, part in enumerate(parts[:-2]):
    if part == ADAPTERS_KEY:
      return parts[i + 1]
  return None


def is_adapter_path(path: str, name: str | None = None) -> bool:
  """Whether a `/`-joined leaf path belongs to adapter `name` (any adapter if None)."""
  owner = path_adapter(path)
  return owner is not None and (name is None or owner == name)


def adapter_leaves(params: Params, name: str) -> dict[str, Any]:
  """The leaves of adapter `name`, as `{path: array}`."""
  flat = traverse_util.flatten_dict(params, sep='/')
  return {p: v for p, v in flat.items() if is_adapter_path(p, name)}


def adapter_names_in(params: Params) -> tuple[str, ...]:
  """Every adapter name that has leaves in `params`, in tree order."""
  names: dict[str, None] = {}
  for path in traverse_util.flatten_dict(params, sep='/'):
    owner = path_adapter(path)
    if owner is not None:
      names.setdefault(owner, None)
  return tuple(names)


def site_subtree(flat: Params, site_path: str, name: str) -> Params:
  """Adapter `name`'s params at one site, as a nested dict (from a flat `{path: array}` map)."""
  prefix = f'{site_path}/{ADAPTERS_KEY}/{name}/'
  return traverse_util.unflatten_dict(
      {p[len(prefix):]: v for p, v in flat.items() if p.startswith(prefix)}, sep='/')


def rename_path(path: str, old: str, new: str) -> str:
  """`path` with adapter `old`'s key replaced by `new` (host leaves are returned unchanged)."""
  parts = path.split('/')
  for i, part in enumerate(parts[:-2]):
    if part == ADAPTERS_KEY and parts[i + 1] == old:
      parts[i + 1] = new
      break
  return '/'.join(parts)


def adapter_digest(params: Params, name: str) -> str:
  """sha256 over adapter `name`'s leaves (paths, shapes, dtypes and bytes): which weights these are."""
  digest = hashlib.sha256()
  for path, leaf in sorted(adapter_leaves(params, name).items()):
    leaf = np.asarray(leaf)
    digest.update(f'{path}:{leaf.shape}:{leaf.dtype.name};'.encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()
