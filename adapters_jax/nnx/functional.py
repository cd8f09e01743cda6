"""An adapted NNX model as a params tree and a pure apply function: the form the run engine, the
optimizer partition, the checkpoints and the placement consume for Linen models.

`nnx.split` gives a graph definition and the model's state; the state's `nnx.Param`s (the base's
and the adapters' `AdapterParam`s) become one nested dict with string keys (`'layers/0/attn/query/
kernel'` split at `/`, the keys `adapters_jax.nnx.checkpoint` writes), everything else (RNG
streams, batch statistics) stays with the graph. `apply` merges the two back into a model for
one call (inside `jax.jit` that happens once, at trace time) and calls it. Randomness in a call
comes from the keys it is given (`nnx.reseed`), never from RNG counts kept between calls, so a
training step is a function of its key alone (what makes a resumed run equal an uninterrupted one).

    functional = Functional(model)                     # after add_adapter
    mask = functional.mask(trained_filter(model))      # bool tree shaped like functional.params
    logits = functional.apply(functional.params, ids, mask, types, active='sst2')
    logits = functional.apply(params, ids, mask, types, deterministic=False,
                              rngs={'dropout': key})   # training mode, reseeded dropout

`params` holds the arrays the model was split into, and nothing else here does (the split keeps
each param's variable type and metadata with an abstract value), so `without_params()` lets a
replacement (a quantised base, `adapters_jax.quantization`) free the float arrays.

It answers `adapter(name)` like `splicing.Spliced`, so `checkpoint.save.save_adapter` writes an
NNX run's best adapter in the format every reader of checkpoints knows.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
from flax import nnx, traverse_util

from adapters_jax.nnx import splice
from adapters_jax.splicing.tree import AdapterSpec, Params


def path_key(path: tuple[Any, ...]) -> str:
  """A graph path as one `/`-joined string (`('layers', 0, 'attn')` -> `'layers/0/attn'`)."""
  return '/'.join(str(k) for k in path)


class Functional:
  """An NNX model taken apart: `params` (nested dict of arrays) and `apply(params, ...)`.

  Attributes:
    params: every `nnx.Param` of the model (base and adapters), keyed by path parts; None after
      `without_params`.
  """

  def __init__(self, model: nnx.Module):
    self._graphdef, param_state, rest = nnx.split(model, nnx.Param, ...)
    slots = list(nnx.to_flat_state(param_state))
    self._rest = list(nnx.to_flat_state(rest))
    self.params: Params | None = traverse_util.unflatten_dict(
        {path_key(p): v[...] for p, v in slots}, sep='/')
    # Types and metadata only: `model` takes the values from its argument.
    self._slots = [(p, v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype))) for p, v in slots]
    self._specs = {spec.name: spec for spec in splice.adapter_specs(model)}
    self.stream_names = sorted({node.key.tag for _, node in nnx.iter_graph(model)
                                if isinstance(node, nnx.RngStream)})

  def model(self, params: Params) -> nnx.Module:
    """A model whose params are `params` (arrays or tracers; the rest is the split model's)."""
    flat = traverse_util.flatten_dict(params, sep='/')
    state = nnx.from_flat_state([(path, variable.replace(flat[path_key(path)]))
                                 for path, variable in self._slots])
    # Fresh variables (of this trace) for the rest too: a call may update them (RNG counts).
    rest = nnx.from_flat_state([(path, variable.replace(variable[...]))
                                for path, variable in self._rest])
    return nnx.merge(self._graphdef, state, rest)

  def without_params(self) -> Functional:
    """This model with `params` None (it applies the same): the arrays are freed once the caller
    drops its own references, e.g. when a quantised copy replaces the float base."""
    functional = copy.copy(self)
    functional.params = None
    return functional

  def apply(self, params: Params, *args: Any, deterministic: bool = True, active: Any = None,
            rngs: dict[str, jax.Array] | None = None, **kwargs: Any) -> Any:
    """The model called on `args`/`kwargs` with `params`, running adapter choice `active`.

    Args:
      deterministic: `model.eval()` (dropout off) when True, else `model.train()`.
      active: what runs at the adapted sites (`splice.set_active`: a name, a stack, None).
      rngs: `{stream: key}` the model's RNG streams are reseeded with (e.g. `{'dropout': key}`),
        so one key gives one dropout mask whatever ran before. In training every stream the
        model holds (`stream_names`) needs a key; in evaluation none is drawn from.

    Raises:
      ValueError: training, and a stream of the model gets no key (its draws would repeat in
        every call: the same dropout mask at every step).
    """
    unseeded = [n for n in self.stream_names if n not in (rngs or {})]
    if not deterministic and unseeded:
      raise ValueError(f'The model holds RNG streams {unseeded} that no key reseeds (given: '
                       f'{sorted(rngs or {})}); build its dropout from those streams, e.g. '
                       'nnx.Dropout(rate, rngs=rngs) with rngs=nnx.Rngs(seed, dropout=seed).')
    model = self.model(params)
    splice.set_active(model, active)
    if deterministic:
      model.eval()
    else:
      model.train()
    if rngs:
      nnx.reseed(model, **rngs)
    return model(*args, **kwargs)

  def mask(self, wrt: nnx.filterlib.Filter) -> Params:
    """`params`' tree with True on the leaves filter `wrt` selects (e.g. `trained_filter`)."""
    selects = nnx.filterlib.to_predicate(wrt)
    return traverse_util.unflatten_dict(
        {path_key(p): bool(selects(p, v)) for p, v in self._slots}, sep='/')

  def adapter(self, name: str) -> AdapterSpec:
    """The spec of spliced adapter `name` (sites, method config), as `Spliced.adapter` gives it."""
    if name not in self._specs:
      raise KeyError(f'No adapter named {name!r}; spliced adapters: {sorted(self._specs)}.')
    return self._specs[name]
