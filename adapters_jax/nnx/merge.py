"""Folding LoRA, DoRA and (IA)3 adapters into an NNX model's own kernels, and taking them
back out.

The fold is the method config's (`MethodConfig.merge` / `unmerge`, on a kernel [in, out] and a bias
[out]); here the site's `kernel` (and `bias`) variables are read and written in place, in the
layouts `adapters_jax.nnx.site_kernel` reads (`nnx.Linear`, `nnx.LinearGeneral`; other sites are
refused with the reason). A merged DoRA adapter cannot be unmerged (the column norms are lost).

    merge_adapter(model, 'lora')     # the base model now computes what the adapter did
    unmerge_adapter(model, 'lora')   # back (equal up to float rounding)
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from adapters_jax.nnx import adapted_site, site_kernel
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
  sites = [(module, next(s for s in module.adapter_slots if s.name == name).site)
           for module in adapted_sites(model).values()
           if any(slot.name == name for slot in module.adapter_slots)]
  problems = [p for p in (site_kernel.layout_problem(m, s) for m, s in sites) if p]
  if problems:
    raise ValueError('; '.join(problems) + '. Run the adapter unmerged there.')
  fold = spec.method.merge if merge else spec.method.unmerge  # DoRA's unmerge raises here
  folded = [fold(site_kernel.host_params(module, site),
                 adapted_site.to_arrays(module.adapters[name], skip=(SHARED_KEY,)), site)
            for module, site in sites]  # every site folded before any is written
  if name in adapter_names(active(model)):
    set_active(model, None)  # a merged adapter runs as part of the base: not twice
  for (module, _), params in zip(sites, folded, strict=True):
    site_kernel.write_host_params(module, params)
    module.adapter_slots = tuple(dataclasses.replace(s, merged=merge) if s.name == name else s
                                 for s in module.adapter_slots)
