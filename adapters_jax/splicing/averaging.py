"""Averaging adapters by their parameters: one new adapter that combines several spliced ones.

    spliced, params = average_adapter(spliced, params, 'avg', ['l1', 'l2'], weights=(0.25, 0.75))
    out = spliced.apply(params, ids, mask, active='avg')

How each method combines is the method config's `average` hook (LoRA: exact by concatenating
ranks; (IA)3: exact; bottleneck: a linear interpolation only). To average *outputs* without a new
adapter, use `composition.Average` at apply time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flax import traverse_util

from adapters_jax.splicing.splice import Spliced
from adapters_jax.splicing.tree import Params, adapter_path, check_name, site_subtree


def average_adapter(spliced: Spliced, params: Params, name: str, sources: Sequence[str],
                    weights: Sequence[float] | None = None,
                    how: str = 'exact') -> tuple[Spliced, Params]:
  """A new adapter `name` whose parameters combine `sources` (weights normalised to sum 1).

  how='exact': the new adapter's output is the weighted average of the sources' outputs (LoRA:
    A = [A_1 ... A_n], B = [c_1 B_1; ...; c_n B_n] with c_i = w_i s_i (s = alpha / r,
    or alpha / sqrt(r) with rsLoRA) and alpha = rank;
    (IA)3: the weighted average of the scales).
  how='linear': every leaf is the weighted average of the sources' leaves (adapter-hub's
    `average_adapter(..., combine_strategy='linear')`); for LoRA this is *not* the average of the
    outputs (A B is bilinear), for bottlenecks only an interpolation (meaningful when the sources
    share an initialisation). Needs identical configs.

  Raises:
    ValueError: unknown `how`, a taken name, mixed methods or sites, or a method where the
      combination makes no sense (Compacter's shared rules, fusion layers).
  """
  if how not in ('exact', 'linear'):
    raise ValueError(f"Unknown how={how!r}; valid: 'exact', 'linear'.")
  check_name(name)
  if name in spliced.names:
    raise ValueError(f'An adapter named {name!r} is already spliced; choose another name.')
  specs = [spliced.adapter(s) for s in sources]
  weights = list(weights) if weights is not None else [1.0] * len(specs)
  if not specs or len(weights) != len(specs) or abs(sum(weights)) < 1e-12:
    raise ValueError(f'average_adapter needs one weight per source with a nonzero sum, got '
                     f'{weights} for {list(sources)}.')
  weights = [w / sum(weights) for w in weights]
  if len({type(s.method) for s in specs}) != 1:
    raise ValueError(f'average_adapter combines adapters of one method; got '
                     f'{sorted(s.method.kind for s in specs)}.')
  specs[0].method.check_average(how)
  if any(s.sites != specs[0].sites for s in specs):
    raise ValueError('average_adapter needs the sources at the same sites; '
                     f'{[len(s.sites) for s in specs]} sites.')
  methods = [s.method for s in specs]
  flat = traverse_util.flatten_dict(params, sep='/')
  new_flat = dict(flat)
  new_method = None
  for site in specs[0].sites:
    site_params = [site_subtree(flat, site.path, s.name) for s in specs]
    new_method, combined = methods[0].average(methods, site_params, weights, how)
    for leaf_path, leaf in traverse_util.flatten_dict(combined, sep='/').items():
      new_flat[adapter_path(site.path, name, leaf_path)] = leaf
  spec = dataclasses.replace(specs[0], name=name, method=new_method, merged=False)
  return (dataclasses.replace(spliced, adapters=spliced.adapters + (spec,)),
          traverse_util.unflatten_dict(new_flat, sep='/'))
