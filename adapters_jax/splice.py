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
side by side in one tree, and `active=None` gives the base model. `active` may also be a composition
(`adapters_jax.composition`: Stack, Average, Fuse, PerExample with a per-row `adapter_index`,
Parallel), and `skip_layers=k` leaves adapters out of the first k blocks (AdapterDrop). The
composition is compiled into one small program per site (input transform, output transform) that
the interceptor runs around the site's call.

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

from adapters_jax import composition
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

  def apply(self, params: Params, *args, active: Any = None,
            adapter_deterministic: bool | None = None, rngs: Mapping[str, jax.Array] | None = None,
            method: Any = None, adapter_index: Any = None, skip_layers: int | Sequence[int] = 0,
            **kwargs) -> Any:
    """Runs the host with the `active` adapters applied at their sites.

    Args:
      params: the host's params with adapters grafted in.
      *args: the host's positional arguments.
      active: an adapter name, a sequence of names (stacked in that order at shared sites), a
        composition from `adapters_jax.composition` (Stack, Average, Fuse, PerExample, Parallel),
        or None for the base model.
      adapter_deterministic: disable adapter dropout; defaults to the host's `deterministic` kwarg
        (or True when the host takes none).
      rngs: the host's RNG streams; adapters draw from `dropout`.
      method: the host method to call (default `__call__`).
      adapter_index: with `active=PerExample(...)`: int array [B], the branch of each row
        (-1 = base model); see `composition.choice_index`. Traced, so jitting over it compiles once
        per shape.
      skip_layers: AdapterDrop: no adapter in the first `k` blocks (an int) or in the given block
        indices (a sequence).
      **kwargs: the host's keyword arguments (e.g. `mutable=['intermediates']` to get the fusion
        attention weights back, see `adapters_jax.fusion.fusion_attentions`).

    Returns:
      The host's output; with `Parallel`, every output leaf gets a leading axis [n_branches].
    """
    if adapter_deterministic is None:
      adapter_deterministic = bool(kwargs.get('deterministic', True))
    node = composition.validate(composition.normalize(active), self)
    if isinstance(node, composition.PerExample) and adapter_index is None:
      raise composition.CompositionError(
          'active=PerExample(...) needs adapter_index=, an int array [batch] naming each row\'s '
          'branch (-1 = base); make it with composition.choice_index(active, per_row_choices).')
    if adapter_index is not None and not isinstance(node, composition.PerExample):
      raise composition.CompositionError(
          'adapter_index is only used with active=PerExample(...); drop it or wrap the branches '
          'in PerExample.')
    n_parallel = len(node.children) if isinstance(node, composition.Parallel) else 0
    if n_parallel:
      args, kwargs, adapter_index = _repeat_batch(args, kwargs, n_parallel)
    table = composition.compile_sites(node, self, composition.skip_layer_set(skip_layers))
    index = None if adapter_index is None else jnp.asarray(adapter_index, jnp.int32)
    interceptor = _SiteInterceptor(table, params, adapter_deterministic, index)
    with nn.intercept_methods(interceptor):
      out = self.model.apply({'params': params}, *args, rngs=rngs, method=method, **kwargs)
    if n_parallel:
      if kwargs.get('mutable'):
        out, state = out
        return _split_batch(out, n_parallel), state
      return _split_batch(out, n_parallel)
    return out


def _repeat_batch(args, kwargs, n: int):
  """Every array argument with the batch as its leading axis, repeated n times along it."""
  if not args or not hasattr(args[0], 'shape'):
    raise composition.CompositionError('Parallel needs the host\'s first argument to be an array '
                                       'with the batch as its leading axis.')
  batch = args[0].shape[0]

  def tile(value):
    if hasattr(value, 'shape') and hasattr(value, 'dtype') and value.ndim and \
        value.shape[0] == batch:
      return jnp.concatenate([jnp.asarray(value)] * n, axis=0)
    return value

  args = tuple(tile(a) for a in args)
  kwargs = {k: tile(v) for k, v in kwargs.items()}
  index = jnp.repeat(jnp.arange(n, dtype=jnp.int32), batch)  # [n * batch]
  return args, kwargs, index


def _split_batch(out, n: int):
  return jax.tree.map(lambda a: a.reshape((n, a.shape[0] // n) + a.shape[1:]), out)


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
  """The method interceptor: runs each spliced site's composition program around the call."""

  def __init__(self, table, params: Params, deterministic: bool, index=None):
    self.table = table
    self.shared = params.get(ADAPTERS_KEY, {})
    self.deterministic = deterministic
    self.index = index

  def __call__(self, next_fun, args, kwargs, context):
    if context.method_name != '__call__' or getattr(_LOCAL, 'busy', False):
      return next_fun(*args, **kwargs)
    program = self.table.get('/'.join(context.module.path))
    if program is None:
      return next_fun(*args, **kwargs)
    ops = _SiteCall(self, context.module)
    x, rest = args[0], args[1:]
    x = program.inp(ops, x)
    y = next_fun(x, *rest, **kwargs)
    return program.out(ops, y, x)


class _SiteCall(composition.SiteOps):
  """One call of a spliced site: runs adapters and fusion layers with the grafted params."""

  def __init__(self, interceptor: _SiteInterceptor, module: nn.Module):
    self.interceptor = interceptor
    self.module = module
    self.index = interceptor.index
    self.grafted = module.variables.get('params', {}).get(ADAPTERS_KEY, {})

  def _params(self, name: str):
    if name not in self.grafted:
      raise KeyError(f'Adapter {name!r} has no params at {"/".join(self.module.path)}; '
                     'were these params made by add_adapter for this adapter?')
    return self.grafted[name]

  def _rngs(self):
    if not self.interceptor.deterministic and self.module.has_rng('dropout'):
      return {'dropout': self.module.make_rng('dropout')}
    return None

  def run(self, leaf, x, module):
    name = leaf.spec.name
    shared = self.interceptor.shared.get(name, {}).get(SHARED_KEY)
    with _inside_adapter():
      out = module.apply({'params': self._params(name)}, x, shared=shared,
                         deterministic=self.interceptor.deterministic, rngs=self._rngs())
    return out.astype(x.dtype)

  def fuse(self, fusion, query, deltas):
    name = fusion.spec.name
    with _inside_adapter():
      out, state = fusion.module.apply(
          {'params': self._params(name)}, query, deltas,
          deterministic=self.interceptor.deterministic, rngs=self._rngs(),
          mutable=['intermediates'])
    for probs in state.get('intermediates', {}).get('attention', ()):
      # Collected only when the caller passes mutable=['intermediates'] (else a no-op).
      self.module.sow('intermediates', fusion_attention_key(name), probs)
    return out.astype(query.dtype)


def fusion_attention_key(name: str) -> str:
  """The `intermediates` entry (at each site path) holding fusion `name`'s attention weights."""
  return f'fusion_attention[{name}]'


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
