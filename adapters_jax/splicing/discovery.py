"""Discovery: run the host once, abstractly, and record every module call before a splice.

For each module path the first `__call__` gives what splicing needs to know of the host without
reading its code: the shapes in and out (an adapter's feature sizes, scan axes), the classes of the
module and its ancestors (which transformer block it is in: `splicing.transformer_blocks`) and the
module itself, unbound, with the shapes of its params (how it uses its kernel: `splicing.kernel_layouts`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from adapters_jax.splicing.tree import Params, is_adapter_path

SAMPLE_SHAPE = (2, 16)  # [batch, seq]


def sample_ids(shape: tuple[int, ...] = SAMPLE_SHAPE) -> jax.Array:
  """Token ids (all ones, int32) of `shape`: a host call's input for init and discovery, where only
  the shapes matter."""
  return jnp.ones(shape, jnp.int32)


@dataclasses.dataclass(frozen=True)
class ModuleCall:
  """What the host model did at one module path (first `__call__` seen).

  Attributes:
    path: `/`-joined module path.
    in_shape: shape of the first positional argument, or None if it is not an array.
    arg_shapes: shapes of every positional argument (None where one is not an array).
    out_shape: shape of the output, or None if it is not a single array.
    probe_leaf: relative path and ndim of one of the module's parameters as seen inside the call
      (None: no params); compared with the tree to find scan axes.
    lineage: class names of the module's ancestors and itself, outermost first, one per component
      of `path` (where the transformer blocks are: `adapters_jax.splicing.transformer_blocks`).
    param_shapes: `{relative path: (shape, dtype name)}` of the module's own params as seen inside
      the call (without a scan axis).
    module: the module, unbound (no parent, no variables): applied alone to probe how it uses its
      kernel (`adapters_jax.splicing.kernel_layouts`).
  """

  path: str
  in_shape: tuple[int, ...] | None
  out_shape: tuple[int, ...] | None
  probe_leaf: tuple[str, int] | None
  lineage: tuple[str, ...] = ()
  arg_shapes: tuple[tuple[int, ...] | None, ...] = ()
  param_shapes: tuple[tuple[str, tuple[int, ...], str], ...] = ()
  module: nn.Module | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def module_classes(self) -> dict[str, str]:
    """`{path: class name}` of this module and its ancestors."""
    parts = self.path.split('/')
    return {'/'.join(parts[:i + 1]): kind for i, kind in enumerate(self.lineage)}


def discover_calls(model: nn.Module, params: Params, *args, method: Any = None,
                   **kwargs) -> dict[str, ModuleCall]:
  """Runs the host abstractly (`jax.eval_shape`) and records every module `__call__`.

  Returns:
    `{path: ModuleCall}` in call order (first call of each path).
  """
  calls: dict[str, ModuleCall] = {}

  def record(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    if context.method_name == '__call__':
      path = '/'.join(context.module.path)
      if path not in calls:
        own = traverse_util.flatten_dict(context.module.variables.get('params', {}), sep='/')
        own = {p: v for p, v in own.items() if not is_adapter_path(p)}
        probe = next(((p, v.ndim) for p, v in own.items()), None)
        calls[path] = ModuleCall(
            path=path,
            in_shape=_shape(call_args[0]) if call_args else None,
            out_shape=_shape(out),
            probe_leaf=probe,
            lineage=_lineage(context.module),
            arg_shapes=tuple(_shape(a) for a in call_args),
            param_shapes=tuple((p, tuple(v.shape), v.dtype.name) for p, v in own.items()),
            module=_unbound(context.module))
    return out

  def run(p):
    with nn.intercept_methods(record):
      return model.apply({'params': p}, *args, method=method, **kwargs)

  jax.eval_shape(run, params)
  return calls


def _lineage(module: nn.Module) -> tuple[str, ...]:
  """Class names of the module and its ancestors below the root, outermost first."""
  kinds = []
  while isinstance(module, nn.Module) and module.path:
    kinds.append(f'{type(module).__module__}.{type(module).__qualname__}')
    module = module.parent
  return tuple(reversed(kinds))


def _unbound(module: nn.Module) -> nn.Module | None:
  try:
    return module.clone(parent=None)
  except Exception:  # a module whose fields cannot be copied alone is simply not probed
    return None


def _shape(value) -> tuple[int, ...] | None:
  return tuple(value.shape) if hasattr(value, 'shape') and hasattr(value, 'dtype') else None
