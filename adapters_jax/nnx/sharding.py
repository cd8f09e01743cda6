"""Where an NNX model's adapter leaves live when its base is sharded.

Splicing leaves the base's variables as they are, `nnx.with_partitioning` annotations
(`out_sharding` metadata) and sharded arrays included. At a site whose `kernel` is annotated, each
new adapter leaf gets an `out_sharding` annotation by the Linen runs' rules
(`adapters_jax.train.sharding_rules.ADAPTER_RULES`: replicated; adapters are small), or, with
`lora_follows_kernel=True`, LoRA's A [in, r] takes the split of its site kernel's input dim and B
[r, out] that of its output dim, so `x @ A @ B` needs no gather beyond what the site's own matmul
does. When the site's kernel already lives on a mesh (a model built under `jax.set_mesh`), the leaf
is placed there too, so a jitted step sees one mesh.

    with jax.set_mesh(mesh):
      model = MyModel(rngs=nnx.Rngs(0))       # kernels made with nnx.with_partitioning(...)
      add_adapter(model, 'task', get_method('lora', sites=...), key, ids, lora_follows_kernel=True)
      optimizer = nnx.Optimizer(model, tx, wrt=AdapterParam)   # moments follow their params
"""

from __future__ import annotations

import re
from typing import Any

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.train.sharding_rules import ADAPTER_RULES

# LoRA's leaves and which dim of the site kernel [in, out] each one's dims follow.
_LORA_FOLLOWS = {'lora_a': (0, None), 'lora_b': (None, -1)}


def _kernel_axes(module: nnx.Module) -> tuple[Any, Any] | None:
  """The site kernel's (input, output) mesh axes, when it is a 2-D annotated kernel."""
  kernel = getattr(module, 'kernel', None)
  if not isinstance(kernel, nnx.Variable) or kernel[...].ndim != 2:
    return None
  axes = kernel.get_metadata().get('out_sharding')
  return None if axes is None else tuple(axes)


def leaf_axes(path: str, shape: tuple[int, ...], kernel_axes: tuple[Any, Any] | None,
              lora_follows_kernel: bool) -> tuple[Any, ...]:
  """The `out_sharding` of one adapter leaf at `path` (`<site>/adapters/<name>/...`)."""
  leaf = path.rsplit('/', 1)[-1]
  if lora_follows_kernel and kernel_axes is not None and leaf in _LORA_FOLLOWS and len(shape) == 2:
    return tuple(None if dim is None else kernel_axes[dim] for dim in _LORA_FOLLOWS[leaf])
  spec = next(s for p, s in ADAPTER_RULES if re.fullmatch(p, path))  # trailing dims
  return (None,) * (len(shape) - len(spec)) + tuple(spec)


def place_adapter(module: nnx.Module, name: str, lora_follows_kernel: bool = False) -> None:
  """Annotates (and, on a mesh, places) adapter `name`'s leaves at one adapted site, in place;
  nothing when the site's `kernel` carries no annotation (an unsharded model)."""
  kernel = getattr(module, 'kernel', None)
  if not isinstance(kernel, nnx.Variable) or kernel.get_metadata().get('out_sharding') is None:
    return
  kernel_axes = _kernel_axes(module)
  sharding = kernel[...].sharding if isinstance(kernel, nnx.Variable) else None
  mesh = sharding.mesh if isinstance(sharding, NamedSharding) else None
  site = module.adapter_site_path
  for path, variable in nnx.iter_graph(module.adapters[name]):
    if not isinstance(variable, AdapterParam) or 'out_sharding' in variable.get_metadata():
      continue  # a leaf shared by several sites, annotated at the first
    full = f'{site}/adapters/{name}/' + '/'.join(str(k) for k in path)
    axes = leaf_axes(full, tuple(variable[...].shape), kernel_axes, lora_follows_kernel)
    variable.set_metadata('out_sharding', axes)
    if mesh is not None:
      variable[...] = jax.device_put(variable[...], NamedSharding(mesh, PartitionSpec(*axes)))
