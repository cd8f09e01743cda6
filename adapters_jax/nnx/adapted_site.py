"""One adapted site of an NNX model: the site module itself, given adapters and a call that runs them.

Why graph surgery on the site module itself, not a wrapper and not call interception:
  * NNX has no method interceptor (Linen's `nn.intercept_methods` has no NNX counterpart), and
    patching a host class for the duration of a call would reach every instance of that class and
    hide the adapters from `nnx.jit`'s cache (it keys on the graph, not on a global).
  * A wrapper module holding the original (as `nnx.LoRA(base_module=...)` does) moves every base
    leaf of the site one level down (`attn/out/kernel` becomes `attn/out/base/kernel`), so a base
    checkpoint or a pretrained loader no longer fits the adapted model, and host code that reads its
    submodule's attributes (`self.out.kernel`, `self.out.out_features`) or checks its type breaks.
  * So the matched module stays the same object at the same path with the same attributes: its
    class becomes a one-method subclass of its own class (`adapted_class`), whose `__call__` runs
    the site's adapter program around the original `__call__`. Its adapters are an attribute
    `adapters`, so their leaves sit at `<site path>/adapters/<name>/...`, the layout the Linen
    splice grafts (`adapters_jax.splicing.tree`), and the checkpoint record format fits unchanged.
    What runs (`adapter_active`) is a static attribute: part of the graph, so `nnx.jit` retraces
    when it changes instead of running a stale choice.

The math of every method stays in its Linen module (`methods/`): each call applies
`method.make_module(site)` functionally to the arrays held in `AdapterParam` variables (a method
that reads its site's kernel, DoRA, gets the module's own kernel as [in, out]:
`adapters_jax.nnx.site_kernel`), and the
per-site programs (Stack, Average, Fuse, PerExample, Parallel) are
`adapters_jax.splicing.interception`'s.

Features: an `nnx.LinearGeneral` site (the query/key/value/out projections of
`nnx.MultiHeadAttention`) has several feature axes ([..., heads, head_dim]); the adapter sees them
flattened into one ([..., heads * head_dim]) and its result is reshaped back. Any other site's
feature axes are read from the shapes of its call (`infer_feature_ndims`: an einsum projection
[B, T, D] -> [B, T, heads, head_dim] has one input and two output feature axes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from flax import nnx

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.nnx import site_kernel
from adapters_jax.splicing import interception
from adapters_jax.splicing.composition import CompositionError, Fuse, adapter_names
from adapters_jax.splicing.tree import SHARED_KEY, AdapterSpec


class AdapterParam(nnx.Param):
  """An adapter's trained leaf: `nnx.Optimizer(model, tx, wrt=AdapterParam)` and
  `nnx.split(model, AdapterParam, ...)` select exactly these."""


@dataclasses.dataclass(frozen=True)
class SiteSlot:
  """What one named adapter is at one site (static: hashable, part of the graph definition)."""

  name: str
  method: MethodConfig
  site: SiteInfo
  merged: bool = False


_ADAPTED_CLASSES: dict[type, type] = {}


def adapted_class(cls: type) -> type:
  """The subclass of `cls` whose `__call__` runs the site's adapters (one per host class)."""
  if is_adapted(cls):
    return cls
  if cls not in _ADAPTED_CLASSES:
    # Single inheritance, no new slots: instances keep their layout, so `__class__` can be swapped.
    _ADAPTED_CLASSES[cls] = type(f'Adapted{cls.__name__}', (cls,), {
        '__call__': _adapted_call, '__module__': cls.__module__,
        '__qualname__': f'Adapted{cls.__qualname__}', '_adapted_from': cls})
  return _ADAPTED_CLASSES[cls]


def is_adapted(obj_or_cls: Any) -> bool:
  cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
  return '_adapted_from' in cls.__dict__


def original_class(module: nnx.Module) -> type:
  return type(module).__dict__.get('_adapted_from', type(module))


def adapt(module: nnx.Module, path: str) -> None:
  """Makes `module` an adapted site with no adapters yet (in place; its state is untouched)."""
  if is_adapted(module):
    return
  ndims = feature_ndims(module)
  object.__setattr__(module, '__class__', adapted_class(type(module)))
  module.adapters = nnx.Dict({})
  module.adapter_slots = ()
  module.adapter_active = None
  module.adapter_skip_layers = ()
  module.adapter_site_path = path
  module.adapter_feature_ndims = ndims  # None until `splice.add_adapter` has probed the call


def unadapt(module: nnx.Module) -> None:
  """Gives a site with no adapters left its own class and attributes back."""
  for attribute in ('adapters', 'adapter_slots', 'adapter_active', 'adapter_skip_layers',
                    'adapter_site_path', 'adapter_feature_ndims'):
    delattr(module, attribute)
  object.__setattr__(module, '__class__', original_class(module))


def feature_ndims(module: nnx.Module) -> tuple[int, int] | None:
  """How many trailing axes of the site's input and output are features: an `nnx.LinearGeneral`'s
  own; None for any other module (read from the shapes of its call, `infer_feature_ndims`)."""
  if isinstance(module, nnx.LinearGeneral):
    in_ndim, out_ndim = len(module.in_features), len(module.out_features)
    if tuple(module.axis) != tuple(range(-in_ndim, 0)):
      raise ValueError(f'An adapter site must contract its trailing input axes; this '
                       f'LinearGeneral contracts axis={module.axis}. Choose another site.')
    return in_ndim, out_ndim
  return None


def infer_feature_ndims(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, int]:
  """Feature axes of a call [*lead, *in_features] -> [*lead, *out_features]: the leading axes the
  two shapes share are batch axes, leaving at least one feature axis on each side. A `Linear`
  [B, T, D] -> [B, T, F] has (1, 1); an einsum projection 'BTD,DNH->BTNH' (1, 2), 'BTNH,NHD->BTD'
  (2, 1)."""
  lead, cap = 0, min(len(in_shape), len(out_shape)) - 1
  while lead < cap and in_shape[lead] == out_shape[lead]:
    lead += 1
  return len(in_shape) - lead, len(out_shape) - lead


def flat_features(x: jax.Array, ndim: int) -> jax.Array:
  """[..., f1, ..., fn] -> [..., f1 * ... * fn]."""
  return x.reshape(x.shape[:x.ndim - ndim] + (math.prod(x.shape[x.ndim - ndim:]),))


def to_variables(tree: dict[str, Any]) -> nnx.Dict:
  """A Linen params dict as nested `nnx.Dict`s of `AdapterParam`s (the same keys)."""
  return nnx.Dict({k: to_variables(v) if isinstance(v, dict) else AdapterParam(v)
                   for k, v in tree.items()})


def to_arrays(node: nnx.Dict, skip: tuple[str, ...] = ()) -> dict[str, Any]:
  """The inverse of `to_variables`: nested dicts of arrays, keys in `skip` left out."""
  return {k: to_arrays(v) if isinstance(v, nnx.Dict) else v[...]
          for k, v in node.items() if k not in skip}


# Shapes of each probed site's input and output, filled while `splice.add_adapter` runs the host
# abstractly (see `probing`); None otherwise.
_PROBE: dict[str, tuple] | None = None


def set_probe(record: dict[str, tuple] | None) -> None:
  global _PROBE
  _PROBE = record


# [B] int32 branch of each row while a PerExample choice runs (`splice.adapter_index`); else None.
_INDEX: jax.Array | None = None


def set_index(index: jax.Array | None) -> jax.Array | None:
  """Sets the rows' branches; returns the previous ones."""
  global _INDEX
  previous, _INDEX = _INDEX, index
  return previous


def _adapted_call(self, x, *args, **kwargs):
  """The site's `__call__`: the active adapters' input program, the original call, the output
  program (placements as in `adapters_jax.methods.base`)."""
  call = super(type(self), self).__call__
  in_ndim, out_ndim = self.adapter_feature_ndims or (None, None)
  if _PROBE is not None:
    y = call(x, *args, **kwargs)
    in_shape, out_shape = getattr(x, 'shape', None), getattr(y, 'shape', None)
    if self.adapter_feature_ndims is None and in_shape is not None and out_shape is not None:
      in_ndim, out_ndim = infer_feature_ndims(in_shape, out_shape)
    _PROBE[self.adapter_site_path] = (in_shape, out_shape, in_ndim, out_ndim)
    return y
  program = _site_program(self)
  if program is None:
    return call(x, *args, **kwargs)
  if isinstance(program, interception.ChoiceOp) and _INDEX is None:
    raise CompositionError('A PerExample choice runs: call the model inside '
                           '`with adapter_index(model, index):` (index: int [batch], -1 = base); '
                           'a Parallel one: call it through `run_parallel(model, ...)`.')
  ops = _SiteOps(self)
  x_flat = flat_features(x, in_ndim)
  if program.has_input:
    x_flat = program.inp(ops, x_flat)
    x = x_flat.reshape(x.shape)
  y = call(x, *args, **kwargs)
  return program.out(ops, flat_features(y, out_ndim), x_flat).reshape(y.shape)


def _site_program(module) -> Any:
  """The compiled program of `module.adapter_active` at this site, or None when nothing runs."""
  node = module.adapter_active
  if node is None:
    return None
  skipped = module.adapter_skip_layers  # AdapterDrop: this site's block is skipped
  slots = {slot.name: slot for slot in module.adapter_slots
           if slot.site.layer is None or slot.site.layer not in skipped}
  # Adapters of the composition with no site here (or a skipped one) get an empty spec: the program
  # leaves them out (Stack, Fuse) or lets them pass the site unchanged (Average, PerExample), as
  # the Linen splice does with `skip_layers`.
  names = adapter_names(node) + _fusion_names(node)
  specs = [AdapterSpec(name, slots[name].method, (slots[name].site,), ((),), slots[name].merged)
           if name in slots else AdapterSpec(name, None, (), ())
           for name in names]
  return interception.compile_sites(node, specs).get(module.adapter_site_path)


def _fusion_names(node) -> tuple[str, ...]:
  """The fusion layers a (validated) composition runs: the names of its `Fuse` blocks."""
  if isinstance(node, Fuse):
    return (node.name,)
  children = () if node is None or isinstance(node, str) else node.children
  return tuple(name for child in children for name in _fusion_names(child))


class _SiteOps:
  """Runs one adapter's Linen module on the arrays of its `AdapterParam`s at this site: the
  `ops` the programs of `splicing.interception` call (`run`, `fuse`, `index`)."""

  def __init__(self, module):
    self.module = module
    self.index = _INDEX

  def run(self, leaf, x, module):
    held = self.module.adapters[leaf.spec.name]
    shared = to_arrays(held[SHARED_KEY]) if SHARED_KEY in held else None
    extra = {}
    if leaf.spec.method.reads_site_params:  # DoRA: the site's own kernel, as [in, out]
      extra['site_params'] = {'kernel': site_kernel.read_kernel(self.module, leaf.site)}
    out = module.apply({'params': to_arrays(held, skip=(SHARED_KEY,))}, x, shared=shared,
                       deterministic=True, **extra)
    return out.astype(x.dtype)

  def fuse(self, fusion, query, deltas):
    """The fusion layer `fusion` (a Leaf of a `FusionConfig`): query [..., F], deltas [..., K, F]."""
    params = to_arrays(self.module.adapters[fusion.spec.name])
    return fusion.module.apply({'params': params}, query, deltas,
                               deterministic=True).astype(query.dtype)
