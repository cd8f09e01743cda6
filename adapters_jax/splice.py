"""Splicing adapters into a Flax Linen model without editing it.

Two halves:
  1. *Parameter-tree surgery* (`add_adapter`): run the host once abstractly to see every module call
     and its shapes, match the method's site patterns against the module paths, initialise one adapter
     per matched site and graft its params into the host's tree under that site:

         <site path>/adapters/<name>/...     e.g. encoder/layer_0/attention/output/adapters/sst2/up/kernel
         adapters/<name>/shared/...             params every site of <name> shares (Compacter's rule)

  2. *Interception* (`Spliced.apply`): while the host runs, a `flax.linen.intercept_methods`
     interceptor finds the calls at spliced sites, reads the grafted params from the module's own
     variables and applies the active adapters around the call.

Which adapters run is an argument of `apply` (`active=`), not a tree edit: several named adapters sit
side by side in one tree, and `active=None` gives the base model.

Layers under `nn.scan`: the grafted params get the same leading layer axis as the site's own params,
so the scan slices them with the rest of the layer (found automatically by comparing the shapes the
module sees inside the scan with the shapes in the tree). `nn.remat` needs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from adapters_jax.methods import MethodConfig
from adapters_jax.methods.base import SiteInfo
from adapters_jax.sites import layer_index, match_sites

ADAPTERS_KEY = 'adapters'
SHARED_KEY = 'shared'

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ModuleCall:
  """What the host model did at one module path (first `__call__` seen).

  Attributes:
    path: `/`-joined module path.
    in_shape: shape of the first positional argument, or None if it is not an array.
    out_shape: shape of the output, or None if it is not a single array.
    probe_leaf: relative path and ndim of one of the module's parameters as seen inside the call
      (None: no params); compared with the tree to find scan axes.
  """

  path: str
  in_shape: tuple[int, ...] | None
  out_shape: tuple[int, ...] | None
  probe_leaf: tuple[str, int] | None


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


@dataclasses.dataclass(frozen=True)
class Spliced:
  """A host Linen model plus the named adapters spliced into its params.

  Example:
    >>> spliced, params = add_adapter(model, params, 'sst2', get_method('houlsby'), rng, ids)
    >>> logits = spliced.apply(params, ids, active='sst2')   # with the adapter
    >>> base = spliced.apply(params, ids)                    # the base model
  """

  model: nn.Module
  adapters: tuple[AdapterSpec, ...] = ()

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(a.name for a in self.adapters)

  def adapter(self, name: str) -> AdapterSpec:
    for spec in self.adapters:
      if spec.name == name:
        return spec
    raise KeyError(f'No adapter named {name!r}; spliced adapters: {list(self.names)}.')

  def apply(self, params: Params, *args, active: str | Sequence[str] | None = None,
            adapter_deterministic: bool | None = None, rngs: Mapping[str, jax.Array] | None = None,
            method: Any = None, **kwargs) -> Any:
    """Runs the host with the `active` adapters applied at their sites.

    Args:
      params: the host's params with adapters grafted in.
      *args: the host's positional arguments.
      active: an adapter name, a sequence of names (stacked in that order at shared sites), or None
        for the base model.
      adapter_deterministic: disable adapter dropout; defaults to the host's `deterministic` kwarg
        (or True when the host takes none).
      rngs: the host's RNG streams; adapters draw from `dropout`.
      method: the host method to call (default `__call__`).
      **kwargs: the host's keyword arguments.
    """
    if adapter_deterministic is None:
      adapter_deterministic = bool(kwargs.get('deterministic', True))
    interceptor = _SiteInterceptor(self._site_table(active), params, adapter_deterministic)
    with nn.intercept_methods(interceptor):
      return self.model.apply({'params': params}, *args, rngs=rngs, method=method, **kwargs)

  def _site_table(self, active) -> dict[str, list[tuple[AdapterSpec, SiteInfo, nn.Module]]]:
    names = _active_names(active)
    table: dict[str, list] = {}
    for name in names:
      spec = self.adapter(name)
      if spec.merged:
        raise ValueError(f'Adapter {name!r} is merged into the base weights: it already runs '
                         'as part of the base model; unmerge it to run it as an adapter.')
      for site in spec.sites:
        table.setdefault(site.path, []).append((spec, site, spec.method.make_module(site)))
    return table


def _active_names(active) -> tuple[str, ...]:
  if active is None:
    return ()
  if isinstance(active, str):
    return (active,)
  names = tuple(active)
  if len(set(names)) != len(names):
    raise ValueError(f'Adapter names repeat in active={names}.')
  return names


# While an adapter module runs inside the host, its own sub-module calls pass through untouched.
_LOCAL = threading.local()


@contextlib.contextmanager
def _inside_adapter():
  previous = getattr(_LOCAL, 'busy', False)
  _LOCAL.busy = True
  try:
    yield
  finally:
    _LOCAL.busy = previous


class _SiteInterceptor:
  """The method interceptor: applies adapters around the calls at spliced sites."""

  def __init__(self, table, params: Params, deterministic: bool):
    self.table = table
    self.shared = params.get(ADAPTERS_KEY, {})
    self.deterministic = deterministic

  def __call__(self, next_fun, args, kwargs, context):
    if context.method_name != '__call__' or getattr(_LOCAL, 'busy', False):
      return next_fun(*args, **kwargs)
    entries = self.table.get('/'.join(context.module.path))
    if not entries:
      return next_fun(*args, **kwargs)
    module = context.module
    grafted = module.variables.get('params', {}).get(ADAPTERS_KEY, {})
    x, rest = args[0], args[1:]
    for spec, site, adapter in entries:
      if site.placement == 'input':
        x = self._run(module, grafted, spec, adapter, x)
    y = next_fun(x, *rest, **kwargs)
    for spec, site, adapter in entries:
      if site.placement == 'output':
        y = self._run(module, grafted, spec, adapter, y)
      elif site.placement == 'parallel':
        y = y + self._run(module, grafted, spec, adapter, x)
    return y

  def _run(self, module, grafted, spec: AdapterSpec, adapter: nn.Module, x):
    if spec.name not in grafted:
      raise KeyError(f'Adapter {spec.name!r} has no params at {"/".join(module.path)}; '
                     'were these params made by add_adapter for this adapter?')
    rngs = None
    if not self.deterministic and module.has_rng('dropout'):
      rngs = {'dropout': module.make_rng('dropout')}
    shared = self.shared.get(spec.name, {}).get(SHARED_KEY)
    with _inside_adapter():
      out = adapter.apply({'params': grafted[spec.name]}, x, shared=shared,
                          deterministic=self.deterministic, rngs=rngs)
    return out.astype(x.dtype)


# --------------------------------------------------------------------------------------------------
# Discovery and grafting.


def discover_calls(model: nn.Module, params: Params, *args, method: Any = None,
                   **kwargs) -> dict[str, ModuleCall]:
  """Runs the host abstractly (`jax.eval_shape`) and records every module `__call__`.

  Returns:
    `{path: ModuleCall}` in call order (first call of each path).
  """
  calls: dict[str, ModuleCall] = {}

  def record(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == '__call__' and not getattr(_LOCAL, 'busy', False):
      path = '/'.join(context.module.path)
      if path not in calls:
        own = traverse_util.flatten_dict(context.module.variables.get('params', {}), sep='/')
        own = {p: v for p, v in own.items() if not is_adapter_path(p)}
        probe = next(((p, v.ndim) for p, v in own.items()), None)
        calls[path] = ModuleCall(
            path=path,
            in_shape=_shape(call_args[0]) if call_args else None,
            out_shape=_shape(out),
            probe_leaf=probe)
    return out

  def run(p):
    with nn.intercept_methods(record):
      return model.apply({'params': p}, *args, method=method, **kwargs)

  jax.eval_shape(run, params)
  return calls


def _shape(value) -> tuple[int, ...] | None:
  return tuple(value.shape) if hasattr(value, 'shape') and hasattr(value, 'dtype') else None


def add_adapter(host: nn.Module | Spliced, params: Params, name: str, method: MethodConfig,
                rng: jax.Array, *sample_args, sample_method: Any = None,
                **sample_kwargs) -> tuple[Spliced, Params]:
  """Initialises adapter `name` at every site `method` matches and grafts it into `params`.

  Args:
    host: a Linen model, or a `Spliced` one to add another adapter to.
    params: the host's params (with any adapters already spliced).
    name: the new adapter's name.
    method: the method config (e.g. `get_method('houlsby')`).
    rng: PRNG key for the adapter's init.
    *sample_args, **sample_kwargs: arguments of one host call, used only for their shapes (e.g. a
      batch of token ids and `deterministic=True`).
    sample_method: the host method the sample call uses (default `__call__`).

  Returns:
    The spliced model and the new params (the input params are not modified).

  Raises:
    SiteMatchError: a site pattern matched nothing (the message lists candidate paths).
    ValueError: the name is taken, or a matched site does not map one array to one array.
  """
  spliced = host if isinstance(host, Spliced) else Spliced(host)
  if name in spliced.names:
    raise ValueError(f'An adapter named {name!r} is already spliced; names: {list(spliced.names)}.')
  if not name or '/' in name:
    raise ValueError(f'Adapter names must be non-empty and contain no "/": {name!r}.')
  calls = discover_calls(spliced.model, params, *sample_args, method=sample_method,
                         **sample_kwargs)
  matched = match_sites(method.site_rules(), list(calls))
  flat = traverse_util.flatten_dict(params, sep='/')

  shared_module = method.make_shared_module()
  shared_key, site_key = jax.random.split(rng)
  shared = None
  new_flat = dict(flat)
  if shared_module is not None:
    shared = shared_module.init(shared_key)['params']
    for leaf_path, leaf in traverse_util.flatten_dict(shared, sep='/').items():
      new_flat[f'{ADAPTERS_KEY}/{name}/{SHARED_KEY}/{leaf_path}'] = leaf

  sites, stack_dims = [], []
  for index, (path, rule) in enumerate(matched.items()):
    layer = layer_index(path)
    if layer is not None and layer in method.leave_out:
      continue
    call = calls[path]
    if call.in_shape is None or call.out_shape is None:
      raise ValueError(f'Site {path} does not map one array to one array (input shape '
                       f'{call.in_shape}, output shape {call.out_shape}); choose a module that does.')
    site = SiteInfo(path=path, placement=rule.placement, in_features=call.in_shape[-1],
                    out_features=call.out_shape[-1], layer=layer)
    dims = _stack_dims(flat, path, call)
    if dims and method.leave_out:
      raise ValueError('leave_out needs unscanned layers: the layers at '
                       f'{path} are under nn.scan.')
    site_params = _init_site(method.make_module(site), jax.random.fold_in(site_key, index),
                             site, shared, dims)
    for leaf_path, leaf in traverse_util.flatten_dict(site_params, sep='/').items():
      new_flat[f'{path}/{ADAPTERS_KEY}/{name}/{leaf_path}'] = leaf
    sites.append(site)
    stack_dims.append(dims)
  if not sites:
    raise ValueError(f'Adapter {name!r} got no site: every matched layer is in leave_out='
                     f'{method.leave_out}.')

  spec = AdapterSpec(name=name, method=method, sites=tuple(sites), stack_dims=tuple(stack_dims))
  new_spliced = dataclasses.replace(spliced, adapters=spliced.adapters + (spec,))
  return new_spliced, traverse_util.unflatten_dict(new_flat, sep='/')


def _stack_dims(flat: Mapping[str, Any], path: str, call: ModuleCall) -> tuple[int, ...]:
  """Leading dims the tree has at `path` beyond what the module sees in its call (nn.scan)."""
  if call.probe_leaf is None:
    return ()
  relative, ndim = call.probe_leaf
  leaf = flat[f'{path}/{relative}']
  return tuple(leaf.shape[:leaf.ndim - ndim])


def _init_site(module: nn.Module, rng: jax.Array, site: SiteInfo, shared, dims) -> Params:
  sample = jnp.zeros((1, site.features), jnp.float32)

  def init(key):
    return module.init(key, sample, shared=shared)['params']

  if not dims:
    return init(rng)
  keys = jax.random.split(rng, int(jnp.prod(jnp.array(dims))))
  stacked = jax.vmap(init)(keys)
  return jax.tree.map(lambda a: a.reshape(dims + a.shape[1:]), stacked)


# --------------------------------------------------------------------------------------------------
# Reading, removing, merging.


def is_adapter_path(path: str, name: str | None = None) -> bool:
  """Whether a `/`-joined leaf path belongs to adapter `name` (any adapter if None)."""
  parts = path.split('/')
  for i, part in enumerate(parts[:-1]):
    if part == ADAPTERS_KEY and (name is None or parts[i + 1] == name):
      return True
  return False


def adapter_leaves(params: Params, name: str) -> dict[str, jax.Array]:
  """The leaves of adapter `name`, as `{path: array}`."""
  flat = traverse_util.flatten_dict(params, sep='/')
  return {p: v for p, v in flat.items() if is_adapter_path(p, name)}


def remove_adapter(spliced: Spliced, params: Params, name: str) -> tuple[Spliced, Params]:
  """Removes adapter `name` from the spliced model and from the params."""
  spliced.adapter(name)  # raises with the valid names
  flat = traverse_util.flatten_dict(params, sep='/')
  kept = {p: v for p, v in flat.items() if not is_adapter_path(p, name)}
  adapters = tuple(a for a in spliced.adapters if a.name != name)
  return dataclasses.replace(spliced, adapters=adapters), traverse_util.unflatten_dict(kept, sep='/')


def merge_adapter(spliced: Spliced, params: Params, name: str) -> tuple[Spliced, Params]:
  """Folds adapter `name` into the base weights at its sites (LoRA, (IA)3).

  The adapter's params stay in the tree, so `unmerge_adapter` can take it back out; while merged it
  is part of the base model and cannot be made active.
  """
  return _fold(spliced, params, name, merge=True)


def unmerge_adapter(spliced: Spliced, params: Params, name: str) -> tuple[Spliced, Params]:
  """Takes a merged adapter back out of the base weights (equal up to float rounding)."""
  return _fold(spliced, params, name, merge=False)


def _fold(spliced: Spliced, params: Params, name: str, merge: bool) -> tuple[Spliced, Params]:
  spec = spliced.adapter(name)
  if spec.merged == merge:
    raise ValueError(f'Adapter {name!r} is {"already" if merge else "not"} merged.')
  flat = traverse_util.flatten_dict(params, sep='/')
  new_flat = dict(flat)
  for site, dims in zip(spec.sites, spec.stack_dims, strict=True):
    host = {k: flat[f'{site.path}/{k}'] for k in ('kernel', 'bias') if f'{site.path}/{k}' in flat}
    prefix = f'{site.path}/{ADAPTERS_KEY}/{name}/'
    adapter = traverse_util.unflatten_dict(
        {p[len(prefix):]: v for p, v in flat.items() if p.startswith(prefix)}, sep='/')
    fold = spec.method.merge if merge else spec.method.unmerge
    fold_one = lambda h, a, site=site, fold=fold: fold(h, a, site)
    for _ in dims:
      fold_one = jax.vmap(fold_one)
    for k, v in fold_one(host, adapter).items():
      new_flat[f'{site.path}/{k}'] = v
  adapters = tuple(dataclasses.replace(a, merged=merge) if a.name == name else a
                   for a in spliced.adapters)
  return (dataclasses.replace(spliced, adapters=adapters),
          traverse_util.unflatten_dict(new_flat, sep='/'))
