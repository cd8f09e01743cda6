"""Splicing adapters into a Flax Linen model without editing it.

Two halves:
  1. *Parameter-tree surgery* (`add_adapter`): run the host once abstractly to see every module call
     and its shapes, match the method's site patterns against the module paths, initialise one adapter
     per matched site and graft its params into the host's tree under that site (the layout is
     `adapters_jax.splicing.tree`'s):

         <site path>/adapters/<name>/...     e.g. encoder/layer_0/attention/output/adapters/sst2/up/kernel
         adapters/<name>/shared/...             params every site of <name> shares (Compacter's rule)

  2. *Interception* (`Spliced.apply`): while the host runs, a `flax.linen.intercept_methods`
     interceptor (`adapters_jax.splicing.interception`) finds the calls at spliced sites, reads the grafted
     params from the module's own variables and applies the active adapters around the call.

Which adapters run is an argument of `apply` (`active=`), not a tree edit: several named adapters sit
side by side in one tree, and `active=None` gives the base model. `active` may also be a composition
(`adapters_jax.splicing.composition`: Stack, Average, Fuse, PerExample with a per-row `adapter_index`,
Parallel), and `skip_layers=k` leaves adapters out of the first k transformer blocks (AdapterDrop;
blocks as the host's module tree has them, `adapters_jax.splicing.transformer_blocks`). The
composition is compiled into one small program per site (input transform, output transform) that
the interceptor runs around the site's call.

Layers under `nn.scan`: the grafted params get the same leading layer axis as the site's own params,
so the scan slices them with the rest of the layer (found automatically by comparing the shapes the
module sees inside the scan with the shapes in the tree). `nn.remat` needs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from adapters_jax.methods import MethodConfig
from adapters_jax.methods.base import SiteInfo
from adapters_jax.splicing import composition, folding, interception
from adapters_jax.splicing.discovery import ModuleCall, discover_calls
from adapters_jax.splicing.kernel_layouts import with_layouts
from adapters_jax.splicing.sites import SiteMatchError, match_sites
from adapters_jax.splicing.transformer_blocks import block_index, no_blocks_message
from adapters_jax.splicing.tree import (
  AdapterSpec,
  Params,
  adapter_names_in,
  adapter_path,
  check_name,
  find_spec,
  is_adapter_path,
  shared_path,
)


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
    """The spec of adapter `name`; a KeyError lists the spliced ones."""
    return find_spec(self.adapters, name)

  def apply(self, params: Params, *args, active: Any = None,
            adapter_deterministic: bool | None = None, rngs: Mapping[str, jax.Array] | None = None,
            method: Any = None, adapter_index: Any = None, skip_layers: int | Sequence[int] = 0,
            **kwargs) -> Any:
    """Runs the host with the `active` adapters applied at their sites.

    Args:
      params: the host's params with adapters grafted in.
      *args: the host's positional arguments.
      active: an adapter name, a sequence of names (stacked in that order at shared sites), a
        composition from `adapters_jax.splicing.composition` (Stack, Average, Fuse, PerExample, Parallel),
        or None for the base model.
      adapter_deterministic: disable adapter dropout; defaults to the host's `deterministic` kwarg
        (or True when the host takes none).
      rngs: the host's RNG streams; adapters draw from `dropout`.
      method: the host method to call (default `__call__`).
      adapter_index: with `active=PerExample(...)`: int array [B], the branch of each row
        (-1 = base model); see `composition.choice_index`. Traced, so jitting over it compiles once
        per shape.
      skip_layers: AdapterDrop: no adapter in the first `k` blocks (an int) or in the given block
        indices (a sequence); refused when no site is inside a block (see `add_adapter`'s
        `block_pattern`).
      **kwargs: the host's keyword arguments (e.g. `mutable=['intermediates']` to get the fusion
        attention weights back, see `adapters_jax.splicing.fusion_layers.fusion_attentions`).

    Returns:
      The host's output; with `Parallel`, every output leaf gets a leading axis [n_branches].
    """
    if adapter_deterministic is None:
      adapter_deterministic = bool(kwargs.get('deterministic', True))
    node = composition.validate(composition.normalize(active), self.adapters)
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
      args, kwargs, adapter_index = repeat_batch(args, kwargs, n_parallel)
    table = interception.compile_sites(node, self.adapters,
                                       interception.skip_layer_set(skip_layers))
    index = None if adapter_index is None else jnp.asarray(adapter_index, jnp.int32)
    every_position = any(find_spec(self.adapters, name).method.reads_every_position
                         for name in composition.adapter_names(node))
    out = interception.run_host(self.model, params, table, *args,
                                adapter_deterministic=adapter_deterministic,
                                index=index, every_position=every_position, rngs=rngs,
                                method=method, **kwargs)
    if n_parallel:
      if kwargs.get('mutable'):
        out, state = out
        return split_batch(out, n_parallel), state
      return split_batch(out, n_parallel)
    return out


def repeat_batch(args, kwargs, n: int):
  """Every array argument with the batch as its leading axis, repeated n times along it, and each
  row's branch: `(args, kwargs, index [n * B] int32)` (Parallel's input)."""
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


def split_batch(out, n: int):
  """Every leaf [n * B, ...] of `out` as [n, B, ...] (the inverse of `repeat_batch`)."""
  return jax.tree.map(lambda a: a.reshape((n, a.shape[0] // n) + a.shape[1:]), out)


# --------------------------------------------------------------------------------------------------
# Grafting.


def add_adapter(host: nn.Module | Spliced, params: Params, name: str, method: MethodConfig,
                rng: jax.Array, *sample_args, sample_method: Any = None, replace: bool = False,
                block_pattern: str | None = None, **sample_kwargs) -> tuple[Spliced, Params]:
  r"""Initialises adapter `name` at every site `method` matches and grafts it into `params`.

  Args:
    host: a Linen model, or a `Spliced` one to add another adapter to.
    params: the host's params (with any adapters already spliced).
    name: the new adapter's name.
    method: the method config (e.g. `get_method('houlsby')`).
    rng: PRNG key for the adapter's init.
    *sample_args, **sample_kwargs: arguments of one host call, used only for their shapes (e.g. a
      batch of token ids and `deterministic=True`).
    sample_method: the host method the sample call uses (default `__call__`).
    replace: if `params` (or the spliced model) already hold an adapter `name`, remove its leaves
      first and initialise a new one; without it such a name is refused.
    block_pattern: a regex searched in each site path whose first group is the transformer block
      index (e.g. `r'(?:^|/)h/(\d+)/'`), for `leave_out` and `skip_layers`; by default the blocks
      are read from the host's module tree (`adapters_jax.splicing.transformer_blocks`).

  Returns:
    The spliced model and the new params (the input params are not modified).

  Raises:
    SiteMatchError: a site pattern matched nothing (the message lists candidate paths).
    ValueError: the name is taken (in the spliced model or in the params' tree) and `replace` is
      False, a matched site does not map one array to one array, or `method.leave_out` names blocks
      but no site is inside a block.
  """
  spliced = host if isinstance(host, Spliced) else Spliced(host)
  check_name(name)
  in_tree = name in adapter_names_in(params)
  if in_tree or name in spliced.names:
    if not replace:
      where = 'the params already hold its leaves' if in_tree else 'it is already spliced'
      raise ValueError(
          f'An adapter named {name!r} exists: {where} (spliced: {list(spliced.names)}, in the '
          f'params: {list(adapter_names_in(params))}). Pass replace=True to drop its leaves and '
          'initialise a new one, or choose another name.')
    params = _drop_leaves(params, name)
    spliced = dataclasses.replace(spliced, adapters=tuple(a for a in spliced.adapters
                                                          if a.name != name))
  calls = discover_calls(spliced.model, params, *sample_args, method=sample_method,
                         **sample_kwargs)
  try:
    matched = match_sites(method.site_rules(), list(calls))
  except SiteMatchError as error:
    if not method.missing_site_hint:
      raise
    raise SiteMatchError(f'{method.missing_site_hint} {error}') from None
  flat = traverse_util.flatten_dict(params, sep='/')
  init_extras = method.init_extras(flat)

  blocks = _site_blocks(calls, matched, block_pattern)
  sites, stack_dims, seeds = [], [], []
  for index, (path, rule) in enumerate(matched.items()):
    call = calls[path]
    dims = _stack_dims(flat, path, call, calls)
    if dims and method.leave_out:
      raise ValueError('leave_out needs unscanned layers: the layers at '
                       f'{path} are under nn.scan.')
    if method.leave_out and not any(b is not None for b in blocks.values()):
      raise ValueError(no_blocks_message(f'leave_out={tuple(method.leave_out)}', list(matched)))
    layer = blocks[path]
    if layer is not None and layer in method.leave_out:
      continue
    site = _site_info(path, rule.placement, call, layer)
    if method.changes_base:  # its init reads the kernel, in the layout the module uses it
      site = with_layouts(name, [site], [dims], flat, None)[0]
    sites.append(site)
    stack_dims.append(dims)
    seeds.append(index)
  if not sites:
    raise ValueError(f'Adapter {name!r} got no site: every matched layer is in leave_out='
                     f'{method.leave_out}.')

  shared_module = method.make_shared_module(tuple(sites))
  shared_key, site_key = jax.random.split(rng)
  shared = None
  new_flat = dict(flat)
  if shared_module is not None:
    shared = shared_module.init(shared_key)['params']
    for leaf_path, leaf in traverse_util.flatten_dict(shared, sep='/').items():
      new_flat[shared_path(name, leaf_path)] = leaf
  for index, site, dims in zip(seeds, sites, stack_dims, strict=True):
    path = site.path
    own = ({k: flat[f'{path}/{k}'] for k in ('kernel', 'bias') if f'{path}/{k}' in flat}
           if method.reads_site_params or method.changes_base else None)
    site_params = _init_site(method.make_module(site), jax.random.fold_in(site_key, index),
                             site, shared, dims, own, init_extras)
    for leaf_path, leaf in traverse_util.flatten_dict(site_params, sep='/').items():
      new_flat[adapter_path(path, name, leaf_path)] = leaf
  spec = AdapterSpec(name=name, method=method, sites=tuple(sites), stack_dims=tuple(stack_dims))
  if method.changes_base:  # PiSSA/OLoRA: the kernel keeps only what the adapter did not take
    new_flat.update(folding.folded_sites(spec, new_flat, spec.sites, merge=False))
  new_spliced = dataclasses.replace(spliced, adapters=spliced.adapters + (spec,))
  return new_spliced, traverse_util.unflatten_dict(new_flat, sep='/')


def _site_blocks(calls: Mapping[str, ModuleCall], matched: Mapping[str, Any],
                 block_pattern: str | None) -> dict[str, int | None]:
  """`{site path: transformer block index or None}`, from the host's module tree or `block_pattern`."""
  classes: dict[str, str] = {}
  for call in calls.values():
    classes.update(call.module_classes)
  return {path: block_index(path, classes, block_pattern) for path in matched}


def _site_info(path: str, placement: str, call: ModuleCall, layer: int | None) -> SiteInfo:
  """The SiteInfo of a matched call; a `keys_values` site's features are its keys' width
  (kv_heads * head_dim)."""
  if placement == 'keys_values':
    if not call.lineage or not call.lineage[-1].endswith('.KeyValueHook') or \
        call.in_shape is None or len(call.in_shape) != 4 or len(call.arg_shapes) != 4 or \
        call.arg_shapes[3] is None:
      raise ValueError(f'Site {path} (placement keys_values) is a {call.lineage[-1:]} module, not '
                       'an attention\'s KeyValueHook (adapters_jax.nn.key_value_hook) taking (key '
                       '[batch, k_len, kv_heads, head_dim], value, mask, query_input [batch, '
                       'q_len, hidden]); name the hook\'s path.')
    width = call.in_shape[-2] * call.in_shape[-1]
    return SiteInfo(path=path, placement=placement, in_features=width, out_features=width,
                    layer=layer, host_call=call)
  if call.in_shape is None or call.out_shape is None:
    raise ValueError(f'Site {path} does not map one array to one array (input shape '
                     f'{call.in_shape}, output shape {call.out_shape}); choose a module that does.')
  return SiteInfo(path=path, placement=placement, in_features=call.in_shape[-1],
                  out_features=call.out_shape[-1], layer=layer, host_call=call)


def _stack_dims(flat: Mapping[str, Any], path: str, call: ModuleCall,
                calls: Mapping[str, ModuleCall]) -> tuple[int, ...]:
  """Leading dims the tree has at `path` beyond what the module sees in its call (nn.scan).

  A module without params (an attention's KeyValueHook) has those of its nearest ancestor that
  has params."""
  parts = path.split('/')
  while call is not None and call.probe_leaf is None and len(parts) > 1:
    parts = parts[:-1]
    call = calls.get('/'.join(parts))
  if call is None or call.probe_leaf is None:
    return ()
  relative, ndim = call.probe_leaf
  leaf = flat[f'{"/".join(parts)}/{relative}']
  return tuple(leaf.shape[:leaf.ndim - ndim])


def _init_site(module: nn.Module, rng: jax.Array, site: SiteInfo, shared, dims,
               own: Params | None = None, init_extras: Mapping[str, Any] | None = None) -> Params:
  """The site module's params; `own`: the site's own `kernel`/`bias` (with the nn.scan `dims`), for
  methods that read them (`reads_site_params`); `init_extras`: `method.init_extras(...)`."""
  sample = jnp.zeros((1, site.features), jnp.float32)
  if site.placement == 'keys_values':  # (key, value, mask, query_input) of one position
    key = jnp.zeros((1, 1) + tuple(site.host_call.in_shape[-2:]), jnp.float32)
    sample = (key, key, None, jnp.zeros((1, 1, site.host_call.arg_shapes[3][-1]), jnp.float32))

  def init(key, own):
    extra = dict(init_extras or {})
    if own is not None:
      extra['site_params'] = own
    # A site module without params (prefix tuning's position shift) grafts nothing.
    return module.init(key, sample, shared=shared, **extra).get('params', {})

  if not dims:
    return init(rng, own)
  keys = jax.random.split(rng, int(jnp.prod(jnp.array(dims))))
  if own is not None:
    own = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[len(dims):]), own)
  stacked = jax.vmap(init)(keys, own)
  return jax.tree.map(lambda a: a.reshape(dims + a.shape[1:]), stacked)


# --------------------------------------------------------------------------------------------------
# Removing.


def remove_adapter(spliced: Spliced, params: Params, name: str) -> tuple[Spliced, Params]:
  """Removes adapter `name` from the spliced model and from the params."""
  if spliced.adapter(name).merged:  # raises with the valid names
    raise ValueError(f'Adapter {name!r} is merged into the base weights; unmerge_adapter it before '
                     'removing it (its update would stay in the base).')
  if spliced.adapter(name).method.changes_base:
    raise ValueError(f'Adapter {name!r} took part of its sites\' kernels at init (PiSSA/OLoRA), so '
                     'without it the base is not the base; merge_adapter it to keep the fine-tuned '
                     'weights, or load the base again.')
  adapters = tuple(a for a in spliced.adapters if a.name != name)
  return dataclasses.replace(spliced, adapters=adapters), _drop_leaves(params, name)


def _drop_leaves(params: Params, name: str) -> Params:
  flat = traverse_util.flatten_dict(params, sep='/')
  kept = {p: v for p, v in flat.items() if not is_adapter_path(p, name)}
  return traverse_util.unflatten_dict(kept, sep='/')
