"""The runtime of splicing: per-site programs compiled from a composition, and the Flax interceptor
that runs them around the host's module calls.

A validated composition (`adapters_jax.splicing.composition`) becomes one small program per site path
(`compile_sites`): an input transform and an output transform built from Leaf / StackOp / AverageOp /
FuseOp / ChoiceOp. While the host runs under `flax.linen.intercept_methods`, `_SiteInterceptor`
finds the calls at those paths, reads the grafted params from the module's own variables and runs
the program. (`adapters_jax.splicing.discovery` uses the same mechanism, abstractly, to see every module call
before a splice.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import threading
from collections.abc import Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp

from adapters_jax.methods.fusion import fusion_attention_key
from adapters_jax.nn.key_value_hook import KeyValueHook
from adapters_jax.splicing.composition import (
  Average,
  CompositionError,
  Fuse,
  Parallel,
  PerExample,
  Stack,
  adapter_names,
)
from adapters_jax.splicing.transformer_blocks import no_blocks_message
from adapters_jax.splicing.tree import ADAPTERS_KEY, SHARED_KEY, AdapterSpec, Params, find_spec

# --------------------------------------------------------------------------------------------------
# Per-site programs: what runs at one site, as input and output transforms.


@dataclasses.dataclass
class Leaf:
  """One adapter at one site; `delta_module` is its module without the residual (for fusion)."""

  spec: AdapterSpec
  site: Any
  module: nn.Module
  delta_module: nn.Module | None = None

  @property
  def has_input(self):
    return self.site.placement in ('input', 'keys_values')

  def inp(self, ops, x):
    return ops.run(self, x, self.module) if self.has_input else x

  def out(self, ops, y, x):
    if self.site.placement == 'output':
      return ops.run(self, y, self.module)
    if self.site.placement == 'parallel':
      return y + ops.run(self, x, self.module)
    return y

  def delta(self, ops, y, x):
    return ops.run(self, y if self.site.placement == 'output' else x, self.delta_module)


@dataclasses.dataclass
class StackOp:
  ops: list

  @property
  def has_input(self):
    return any(op.has_input for op in self.ops)

  def inp(self, ops, x):
    for op in self.ops:
      x = op.inp(ops, x)
    return x

  def out(self, ops, y, x):
    for op in self.ops:
      y = op.out(ops, y, x)
    return y


@dataclasses.dataclass
class AverageOp:
  ops: list  # one per child, None where the child has no site here
  weights: tuple

  @property
  def has_input(self):
    return any(op is not None and op.has_input for op in self.ops)

  def inp(self, ops, x):
    if not self.has_input:
      return x
    return sum(w * (op.inp(ops, x) if op is not None else x)
               for w, op in zip(self.weights, self.ops, strict=True))

  def out(self, ops, y, x):
    return sum(w * (op.out(ops, y, x) if op is not None else y)
               for w, op in zip(self.weights, self.ops, strict=True))


@dataclasses.dataclass
class FuseOp:
  fusion: Leaf
  leaves: list  # the fused adapters present at this site

  has_input = False

  def inp(self, ops, x):
    return x

  def out(self, ops, y, x):
    if not self.leaves:
      return y
    deltas = jnp.stack([leaf.delta(ops, y, x) for leaf in self.leaves], axis=-2)  # [..., K, F]
    return ops.fuse(self.fusion, y, deltas)


@dataclasses.dataclass
class ChoiceOp:
  ops: list  # one per branch, None = unchanged (base, or no site of that branch here)

  @property
  def has_input(self):
    return any(op is not None and op.has_input for op in self.ops)

  def _select(self, ops, default, values):
    index = ops.index
    if index.shape[0] != default.shape[0]:
      raise CompositionError(
          f'adapter_index has {index.shape[0]} rows but a site sees a leading axis of '
          f'{default.shape[0]}; per-example choice needs the batch as the leading axis of every '
          'site activation.')
    out = default
    for k, value in enumerate(values):
      if value is not None:
        row = (index == k).reshape((-1,) + (1,) * (default.ndim - 1))
        out = jnp.where(row, value, out)
    return out

  def inp(self, ops, x):
    if not self.has_input:
      return x
    values = [op.inp(ops, x) if op is not None and op.has_input else None for op in self.ops]
    if isinstance(x, tuple):  # (key, value, mask, query_input) of a keys_values site
      return self._select_keys_values(ops, x, values)
    return self._select(ops, x, values)

  def _select_keys_values(self, ops, x, values):
    """Each row's branch's keys, values and mask: every branch (and the base, `x`) padded in front
    to the longest key length with masked zero keys, then picked per row like `_select`."""
    length = max(v[0].shape[1] for v in [x] + [v for v in values if v is not None])
    padded = [None if v is None else _pad_keys_values(v, length) for v in values]
    base = _pad_keys_values(x, length)
    picked = [self._select(ops, base[i], [None if v is None else v[i] for v in padded])
              for i in range(3)]
    return (*picked, x[3])

  def out(self, ops, y, x):
    return self._select(ops, y, [op.out(ops, y, x) if op is not None else None for op in self.ops])


def _pad_keys_values(kv, length: int):
  """`(key, value, mask)` of a keys_values tuple with `length - k_len` zero keys and values in front,
  masked out; the mask made explicit and per row (`[batch, ..., length]` bool)."""
  key, value, mask = kv[:3]
  batch, k_len = key.shape[:2]
  mask = jnp.ones((batch, 1, 1, k_len), bool) if mask is None else mask.astype(bool)
  mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
  extra = length - k_len
  if extra:
    pad = lambda a: jnp.concatenate([jnp.zeros((batch, extra) + a.shape[2:], a.dtype), a], axis=1)
    key, value = pad(key), pad(value)
    mask = jnp.concatenate([jnp.zeros(mask.shape[:-1] + (extra,), bool), mask], axis=-1)
  return key, value, mask


def skip_layer_set(skip_layers: int | Sequence[int] | None) -> tuple[int, ...]:
  """`k` -> layers 0..k-1; a sequence -> those indices."""
  if skip_layers is None:
    return ()
  if isinstance(skip_layers, int):
    if skip_layers < 0:
      raise CompositionError(f'skip_layers must be >= 0, got {skip_layers}.')
    return tuple(range(skip_layers))
  return tuple(int(i) for i in skip_layers)


def _skip(site, dims, skip_layers) -> bool:
  if not skip_layers:
    return False
  if dims:
    raise CompositionError(f'skip_layers (AdapterDrop) needs unscanned layers; {site.path} is '
                           'under nn.scan. Load the model with scan_layers=False.')
  return site.layer is not None and site.layer in skip_layers


def compile_sites(node, adapters: Sequence[AdapterSpec],
                  skip_layers: tuple[int, ...] = ()) -> dict[str, Any]:
  """`{site path: program}` for a validated composition over the spliced `adapters`."""
  paths: list[str] = []
  for name in adapter_names(node):
    for site in find_spec(adapters, name).sites:
      if site.path not in paths:
        paths.append(site.path)
  if isinstance(node, Fuse):
    paths.extend(s.path for s in find_spec(adapters, node.name).sites if s.path not in paths)
  if skip_layers:
    _check_blocks(node, adapters, skip_layers)
  table = {}
  for path in paths:
    op = _build(node, path, adapters, skip_layers)
    if op is not None:
      table[path] = op
  return table


def _check_blocks(node, adapters: Sequence[AdapterSpec], skip_layers: tuple[int, ...]) -> None:
  """skip_layers needs sites inside blocks; never ignored silently."""
  names = list(adapter_names(node)) + ([node.name] if isinstance(node, Fuse) else [])
  specs = [find_spec(adapters, name) for name in names]
  if any(any(dims) for spec in specs for dims in spec.stack_dims):
    return  # `_skip` names nn.scan as the reason
  sites = [site for spec in specs for site in spec.sites]
  if sites and all(site.layer is None for site in sites):
    raise CompositionError(no_blocks_message(f'skip_layers={skip_layers}',
                                             list(dict.fromkeys(s.path for s in sites))))


def _leaf(name, path, adapters, skip_layers, delta=False):
  spec = find_spec(adapters, name)
  for site, dims in zip(spec.sites, spec.stack_dims, strict=True):
    if site.path == path:
      if _skip(site, dims, skip_layers):
        return None
      module = spec.method.make_module(site)
      delta_module = spec.method.make_delta_module(site) if delta else None
      return Leaf(spec, site, module, delta_module)
  return None


def _build(node, path, adapters, skip_layers):
  if node is None:
    return None
  if isinstance(node, str):
    return _leaf(node, path, adapters, skip_layers)
  if isinstance(node, Stack):
    ops = [op for c in node.children if (op := _build(c, path, adapters, skip_layers)) is not None]
    return None if not ops else ops[0] if len(ops) == 1 else StackOp(ops)
  if isinstance(node, Average):
    ops = [_leaf(c, path, adapters, skip_layers) for c in node.children]
    return AverageOp(ops, node.normalized_weights()) if any(o is not None for o in ops) else None
  if isinstance(node, Fuse):
    fusion = _leaf(node.name, path, adapters, skip_layers)
    if fusion is None:
      return None
    leaves = [leaf for c in node.children
              if (leaf := _leaf(c, path, adapters, skip_layers, delta=True)) is not None]
    return FuseOp(fusion, leaves)
  if isinstance(node, (PerExample, Parallel)):
    ops = [_build(c, path, adapters, skip_layers) for c in node.children]
    return ChoiceOp(ops) if any(o is not None for o in ops) else None
  raise CompositionError(f'Unknown composition block {node!r}.')


# --------------------------------------------------------------------------------------------------
# The interceptor.

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


def run_host(model: nn.Module, params: Params, table: dict[str, Any], *args,
             adapter_deterministic: bool = True, index: jax.Array | None = None,
             every_position: bool = False, **kwargs) -> Any:
  """`model.apply({'params': params}, *args, **kwargs)` with each site's program run around it.

  Args:
    table: `{site path: program}` from `compile_sites`.
    adapter_deterministic: disable adapter dropout (the host's own `deterministic` is in kwargs).
    index: [B] int32 branch of each row, for PerExample / Parallel programs.
    every_position: an active adapter reads every position (`MethodConfig.reads_every_position`):
      host methods taking `first_token_only` are called with False.
  """
  interceptor = _SiteInterceptor(table, params, adapter_deterministic, index, every_position)
  with nn.intercept_methods(interceptor):
    return model.apply({'params': params}, *args, **kwargs)


class _SiteInterceptor:
  """The method interceptor: runs each spliced site's composition program around the call."""

  def __init__(self, table, params: Params, deterministic: bool, index=None,
               every_position: bool = False):
    self.table = table
    self.shared = params.get(ADAPTERS_KEY, {})
    self.deterministic = deterministic
    self.index = index
    self.every_position = every_position

  def __call__(self, next_fun, args, kwargs, context):
    if getattr(_LOCAL, 'busy', False):
      return next_fun(*args, **kwargs)
    if self.every_position:
      args, kwargs = _every_position(context, args, kwargs)
    if context.method_name != '__call__':
      return next_fun(*args, **kwargs)
    program = self.table.get('/'.join(context.module.path))
    if program is None:
      return next_fun(*args, **kwargs)
    ops = _SiteCall(self, context.module)
    if isinstance(context.module, KeyValueHook):
      # the program extends (key, value, mask) and passes the attention's input on
      return next_fun(*program.inp(ops, tuple(args)), **kwargs)
    x, rest = args[0], args[1:]
    x = program.inp(ops, x)
    y = next_fun(x, *rest, **kwargs)
    return program.out(ops, y, x)


def _every_position(context, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
  """`args`/`kwargs` with `first_token_only=False` where the called method takes that argument (a
  host's shortcut that computes position 0 only, which an adapter reading every position breaks)."""
  try:
    names = list(inspect.signature(getattr(type(context.module), context.method_name)).parameters)
  except (AttributeError, TypeError, ValueError):  # a method without a readable signature
    return args, kwargs
  if 'first_token_only' not in names:
    return args, kwargs
  at = names.index('first_token_only') - 1  # without `self`
  if at < len(args):
    return args[:at] + (False,) + args[at + 1:], kwargs
  return args, {**kwargs, 'first_token_only': False}


class _SiteCall:
  """One call of a spliced site: what the site programs (`Leaf`, ...) run adapters and fusion layers
  through, with the grafted params. `index`: [B] int32 branch of each row (PerExample), or None."""

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
    extra = {}
    if leaf.spec.method.reads_site_params:
      extra['site_params'] = {k: v for k, v in self.module.variables.get('params', {}).items()
                              if k != ADAPTERS_KEY}
    # A module without params (prefix tuning's position shift) has nothing grafted: it runs
    # without; any other module missing its params is named.
    params = self.grafted.get(name, {})
    with _inside_adapter():
      try:
        out = module.apply({'params': params}, x, shared=shared,
                           deterministic=self.interceptor.deterministic, rngs=self._rngs(), **extra)
      except flax.errors.ScopeParamNotFoundError:
        if name in self.grafted:
          raise
        self._params(name)  # raises, naming the site
        raise
    if isinstance(x, tuple):  # (key, value, mask, query_input) of a keys_values site
      return out
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
