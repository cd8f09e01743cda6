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


def trained_filter(model: nnx.Module, extra: Sequence[str] = ()) -> nnx.filterlib.Filter:
  """`AdapterParam`s, and the `nnx.Param`s whose paths fully match the spliced adapters'
  `train_also` regexes or `extra`.

  Raises:
    ValueError: a regex matches no param of `model`; the message lists some param paths.
  """
  patterns = [p for spec in adapter_specs(model) for p in spec.method.train_also] + list(extra)
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

  return nnx.Any(AdapterParam, host_param)
