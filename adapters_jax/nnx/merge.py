"""Folding LoRA and (IA)3 adapters into an NNX model's own kernels, and taking them back out.

The fold is the method config's (`MethodConfig.merge` / `unmerge`, on a kernel [in, out] and a bias
[out]); here the site's `kernel` (and `bias`) variables are read and written in place. An
`nnx.Linear` kernel is [in, out] already; an `nnx.LinearGeneral` kernel [*in_axes, *out_axes] is
folded as [prod(in_axes), prod(out_axes)], the way its adapters see the site.

    merge_adapter(model, 'lora')     # the base model now computes what the adapter did
    unmerge_adapter(model, 'lora')   # back (equal up to float rounding)
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx

from adapters_jax.nnx import adapted_site
from adapters_jax.nnx.splice import active, adapted_sites, find_adapter, set_active
from adapters_jax.splicing.composition import adapter_names
from adapters_jax.splicing.tree import SHARED_KEY


def merge_adapter(model: nnx.Module, name: str) -> None:
  """Folds adapter `name` into its sites' kernels (and biases), in place; while merged it does not
  run as an adapter (`set_active` refuses it; a choice that ran it is reset to the base model)
  and cannot be removed."""
  _fold(model, name, merge=True)


def unmerge_adapter(model: nnx.Module, name: str) -> None:
  """Takes a merged adapter back out of the base weights, in place."""
  _fold(model, name, merge=False)


def _fold(model: nnx.Module, name: str, merge: bool) -> None:
  spec = find_adapter(model, name)
  if spec.merged == merge:
    raise ValueError(f'Adapter {name!r} is {"already" if merge else "not"} merged.')
  spec.method.check_merge()
  sites = [(path, module) for path, module in adapted_sites(model).items()
           if any(slot.name == name for slot in module.adapter_slots)]
  for path, module in sites:  # check every site before changing any
    if not isinstance(getattr(module, 'kernel', None), nnx.Variable):
      raise ValueError(f'Site {path} ({adapted_site.original_class(module).__name__}) has no '
                       '`kernel` to fold into; run the adapter unmerged there.')
    slot = next(s for s in module.adapter_slots if s.name == name)
    if math.prod(module.kernel[...].shape) != slot.site.in_features * slot.site.out_features:
      raise ValueError(f'The kernel {module.kernel[...].shape} of site {path} is not its input '
                       f'features x output features ({slot.site.in_features} x '
                       f'{slot.site.out_features}); run the adapter unmerged there.')
  if name in adapter_names(active(model)):
    set_active(model, None)  # a merged adapter runs as part of the base: not twice
  for _, module in sites:
    slot = next(s for s in module.adapter_slots if s.name == name)
    kernel = module.kernel[...]
    in_features, out_features = slot.site.in_features, slot.site.out_features
    host = {'kernel': kernel.reshape(in_features, out_features)}
    has_bias = isinstance(getattr(module, 'bias', None), nnx.Variable)
    if has_bias:
      host['bias'] = module.bias[...].reshape(out_features)
    held = adapted_site.to_arrays(module.adapters[name], skip=(SHARED_KEY,))
    fold = spec.method.merge if merge else spec.method.unmerge
    folded = fold(host, held, slot.site)
    module.kernel[...] = folded['kernel'].reshape(kernel.shape)
    if has_bias:
      module.bias[...] = folded['bias'].reshape(module.bias[...].shape)
    module.adapter_slots = tuple(dataclasses.replace(s, merged=merge) if s.name == name else s
                                 for s in module.adapter_slots)
