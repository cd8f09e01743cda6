"""Eject: fold what an adapter's sites read of its shared params into each site, for inference.

Reparameterised prefix tuning trains an MLP that makes every layer's prefix; at inference only the
prefixes matter. `eject_adapter` computes them once and replaces the adapter by its flat form
(AdapterHub's `eject_prefix_tuning`): the same output, no MLP to run, a smaller checkpoint.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import traverse_util

from adapters_jax.splicing.tree import (
  ADAPTERS_KEY,
  SHARED_KEY,
  Params,
  adapter_path,
  is_adapter_path,
  site_subtree,
)


def eject_adapter(spliced, params: Params, name: str):
  """Adapter `name` with its shared params folded into its sites (`MethodConfig.eject_site`).

  Args:
    spliced: the `Spliced` model holding adapter `name`.
    params: its params.
    name: the adapter to eject.

  Returns:
    `(spliced, params)`: the adapter's config is `method.ejected()` (prefix tuning: `flat=True`),
    its shared params are gone and each site holds the folded params.

  Raises:
    NotImplementedError: the method has nothing to eject (only reparameterised prefix tuning).

  Example:
    >>> spliced, params = eject_adapter(spliced, params, 'e2e')   # then save_adapter as usual
  """
  spec = spliced.adapter(name)
  ejected_method = spec.method.ejected()
  flat = traverse_util.flatten_dict(params, sep='/')
  shared = params.get(ADAPTERS_KEY, {}).get(name, {}).get(SHARED_KEY)
  kept = {p: v for p, v in flat.items() if not is_adapter_path(p, name)}
  for site, dims in zip(spec.sites, spec.stack_dims, strict=True):
    fold = lambda own, site=site: spec.method.eject_site(shared, own, site)
    for _ in dims:  # layers under nn.scan: one site, params with a leading layer axis
      fold = jax.vmap(fold)
    folded = fold(site_subtree(flat, site.path, name))
    for leaf_path, leaf in traverse_util.flatten_dict(folded, sep='/').items():
      kept[adapter_path(site.path, name, leaf_path)] = leaf
  adapters = tuple(dataclasses.replace(a, method=ejected_method) if a.name == name else a
                   for a in spliced.adapters)
  return dataclasses.replace(spliced, adapters=adapters), traverse_util.unflatten_dict(kept, sep='/')
