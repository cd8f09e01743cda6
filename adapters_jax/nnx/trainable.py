"""What trains in an adapted NNX model, as an NNX filter: the adapters' leaves, plus the host
params a method trains with them (`MethodConfig.train_also`, whole-name regexes over `/`-joined
paths, e.g. Houlsby's layer norms) and any further regexes (a task head).

    wrt = trained_filter(model, extra=(r'classifier/.*',))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=wrt)
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)

A regex that matches no param of the model is an error (a misspelt path would otherwise freeze
what was meant to train).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flax import nnx

from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.splice import adapter_specs
from adapters_jax.splicing.tree import ADAPTERS_KEY


def trained_filter(model: nnx.Module, extra: Sequence[str] = (),
                   adapters: Sequence[str] | None = None) -> nnx.filterlib.Filter:
  """`AdapterParam`s, and the `nnx.Param`s whose paths fully match the spliced adapters'
  `train_also` regexes or `extra`.

  Args:
    adapters: only these adapters' leaves (and `train_also`) train, e.g. a fusion's name to train
      its fusion layers over frozen adapters; None: every spliced adapter.

  Raises:
    ValueError: a regex matches no param of `model`; the message lists some param paths.
  """
  specs = [spec for spec in adapter_specs(model) if adapters is None or spec.name in adapters]
  if adapters is not None and len(specs) != len(set(adapters)):
    raise ValueError(f'trained_filter(adapters={list(adapters)}) names adapters that are not spliced '
                     f'(spliced: {[s.name for s in adapter_specs(model)]}).')
  patterns = [p for spec in specs for p in spec.method.train_also] + list(extra)
  paths = ['/'.join(str(k) for k in path)
           for path, _ in nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param,
                                                                     nnx.Not(AdapterParam))))]
  for pattern in dict.fromkeys(patterns):
    if not any(re.fullmatch(pattern, path) for path in paths):
      raise ValueError(f'Trained-params regex {pattern!r} matches no param of this model (whole '
                       f'`/`-joined paths, e.g. {paths[:6]}); fix it, or override the method\'s '
                       'train_also=(...) with this model\'s names.')

  def host_param(path, value) -> bool:
    name = '/'.join(str(k) for k in path)
    return isinstance(value, nnx.Param) and any(re.fullmatch(p, name) for p in patterns)

  def own_adapter_param(path, value) -> bool:
    # Adapter leaves sit at <site>/adapters/<name>/...
    return isinstance(value, AdapterParam) and any(
        path[i] == ADAPTERS_KEY and path[i + 1] in adapters for i in range(len(path) - 1))

  return nnx.Any(AdapterParam if adapters is None else own_adapter_param, host_param)
