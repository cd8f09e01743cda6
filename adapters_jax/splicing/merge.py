"""`merge_adapter` / `unmerge_adapter`: an adapter folded into the base weights of a spliced model
and taken back out."""

import dataclasses
from collections.abc import Mapping

from flax import traverse_util

from adapters_jax.splicing import folding
from adapters_jax.splicing.kernel_layouts import check_kernel_layouts, with_layouts
from adapters_jax.splicing.splice import Spliced
from adapters_jax.splicing.tree import Params


def merge_adapter(spliced: Spliced, params: Params, name: str,
                  kernel_layout: Mapping[str, str] | None = None) -> tuple[Spliced, Params]:
  """Folds adapter `name` into the base weights at its sites (LoRA, VeRA, DoRA, (IA)3).

  The update is folded in the layout the host's module uses its kernel in (`[in, out]` as
  `flax.linen.Dense`, `[out, in]` as GPT-2's Conv1D; see `splicing.kernel_layouts`). The adapter's
  params stay in the tree, so `unmerge_adapter` can take it back out; while merged it is part of the
  base model and cannot be made active.

  Args:
    kernel_layout: `{site regex: 'in_out' | 'out_in'}`, for sites whose layout cannot be read from
      the module (the first whole-path match wins); by default every site's module is probed.

  Raises:
    NotImplementedError: the method cannot merge (only LoRA, VeRA, DoRA and (IA)3 can).
    ValueError: a site's kernel layout is unknown, or an override contradicts its kernel's shape
      (the message names every such site and why).
  """
  return _fold(spliced, params, name, merge=True, kernel_layout=kernel_layout)


def unmerge_adapter(spliced: Spliced, params: Params, name: str,
                    kernel_layout: Mapping[str, str] | None = None) -> tuple[Spliced, Params]:
  """Takes a merged adapter back out of the base weights (equal up to float rounding).

  Uses the layouts the merge used, unless `kernel_layout` (as for `merge_adapter`) says otherwise.
  """
  return _fold(spliced, params, name, merge=False, kernel_layout=kernel_layout)


def _fold(spliced: Spliced, params: Params, name: str, merge: bool,
          kernel_layout: Mapping[str, str] | None) -> tuple[Spliced, Params]:
  spec = spliced.adapter(name)
  if spec.merged == merge:
    raise ValueError(f'Adapter {name!r} is {"already" if merge else "not"} merged.')
  spec.method.check_merge()
  if kernel_layout:
    check_kernel_layouts(kernel_layout)
  flat = traverse_util.flatten_dict(params, sep='/')
  sites = with_layouts(spec.name, spec.sites, spec.stack_dims, flat, kernel_layout)
  new_flat = {**flat, **folding.folded_sites(spec, flat, sites, merge=merge)}
  adapters = tuple(dataclasses.replace(a, merged=merge, sites=sites) if a.name == name else a
                   for a in spliced.adapters)
  return (dataclasses.replace(spliced, adapters=adapters),
          traverse_util.unflatten_dict(new_flat, sep='/'))
