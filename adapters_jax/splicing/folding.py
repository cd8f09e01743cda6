"""Folding an adapter's update into its sites' base weights, or back out (merge and unmerge).

The methods fold into `[in, out]` kernels; a site whose host stores `[out, in]` (GPT-2's Conv1D,
`SiteInfo.kernel_layout == 'out_in'`) is transposed around the fold.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from adapters_jax.methods.base import SiteInfo
from adapters_jax.splicing.tree import SHARED_KEY, AdapterSpec, shared_path, site_subtree


def folded_sites(spec: AdapterSpec, flat: Mapping[str, Any], sites: Sequence[SiteInfo],
                  merge: bool) -> dict[str, Any]:
  """`{host leaf path: value}` of the site weights with adapter `spec` folded in (`merge`) or out;
  `sites` carry their kernel layouts."""
  out = {}
  shared_prefix = shared_path(spec.name, '')
  shared = traverse_util.unflatten_dict(
      {p[len(shared_prefix):]: v for p, v in flat.items() if p.startswith(shared_prefix)}, sep='/')
  for site, dims in zip(sites, spec.stack_dims, strict=True):
    host = {k: flat[f'{site.path}/{k}'] for k in ('kernel', 'bias') if f'{site.path}/{k}' in flat}
    if site.kernel_layout == 'out_in':  # the methods fold into [in, out]
      host['kernel'] = jnp.swapaxes(host['kernel'], -1, -2)
    adapter = site_subtree(flat, site.path, spec.name)
    fold = spec.method.merge if merge else spec.method.unmerge
    # The adapter's shared params (VeRA's stored projections) reach every site unbatched.
    fold_one = lambda h, a, site=site, fold=fold: fold(h, {**a, SHARED_KEY: shared} if shared else a,
                                                       site)
    for _ in dims:
      fold_one = jax.vmap(fold_one)
    folded = fold_one(host, adapter)
    if site.kernel_layout == 'out_in':
      folded['kernel'] = jnp.swapaxes(folded['kernel'], -1, -2)
    out.update({f'{site.path}/{k}': v for k, v in folded.items()})
  return out
