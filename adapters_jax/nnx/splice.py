"""Splicing adapters into a Flax NNX model without editing its code.

The same method configs and presets as for Linen models (`adapters_jax.methods.get_method`), the
same site patterns (whole-name regexes over `/`-joined module paths of the NNX graph, e.g.
`layers/3/attn/out`), the same placements (output, parallel, input). How a site is adapted is
`adapters_jax.nnx.adapted_site`'s (in place: the site module keeps its path and state).

    model = MyNnxTransformer(..., rngs=nnx.Rngs(0))
    add_adapter(model, 'sst2', get_method('lora', sites=((r'layers/\\d+/attn/(query|value)', 'parallel'),)),
                jax.random.key(0), ids)
    set_active(model, 'sst2')            # what runs, until set again (None: the base model)
    with activated(model, ('a', 'b')):   # or for a block of calls (Stack; Average(...) too)
      logits = model(ids)
    set_active(model, 'sst2', skip_layers=3)   # AdapterDrop: none in blocks 0..2
    set_active(model, Parallel('a', 'b'))      # every branch on the whole batch, in one call:
    logits = run_parallel(model, ids)          # [2, batch, ...]

Train only the adapters with `nnx.Optimizer(model, tx, wrt=AdapterParam)` and
`nnx.value_and_grad(loss, argnums=nnx.DiffState(0, AdapterParam))`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from adapters_jax.methods.base import MethodConfig, SiteInfo
from adapters_jax.nnx import adapted_site, sharding, site_kernel
from adapters_jax.nnx.adapted_site import SiteSlot
from adapters_jax.splicing import composition, interception
from adapters_jax.splicing import splice as linen_splice
from adapters_jax.splicing.sites import match_sites
from adapters_jax.splicing.transformer_blocks import block_index, no_blocks_message
from adapters_jax.splicing.tree import SHARED_KEY, AdapterSpec, check_name


def module_paths(model: nnx.Module) -> dict[str, nnx.Module]:
  """`{'/'-joined path: module}` for every submodule of `model` (the root left out)."""
  return {'/'.join(str(k) for k in path): node for path, node in nnx.iter_graph(model)
          if path and isinstance(node, nnx.Module)}


def adapted_sites(model: nnx.Module) -> dict[str, nnx.Module]:
  """`{site path: module}` of every adapted site."""
  return {p: m for p, m in module_paths(model).items() if adapted_site.is_adapted(m)}


def adapter_specs(model: nnx.Module) -> tuple[AdapterSpec, ...]:
  """Every adapter spliced into `model`, as the Linen splice describes them (sites in graph order)."""
  by_name: dict[str, list[SiteSlot]] = {}
  for module in adapted_sites(model).values():
    for slot in module.adapter_slots:
      by_name.setdefault(slot.name, []).append(slot)
  return tuple(AdapterSpec(name, slots[0].method, tuple(s.site for s in slots),
                           tuple(() for _ in slots), slots[0].merged)
               for name, slots in by_name.items())


def add_adapter(model: nnx.Module, name: str, method: MethodConfig, rng: jax.Array,
                *sample_args, block_pattern: str | None = None, lora_follows_kernel: bool = False,
                **sample_kwargs) -> AdapterSpec:
  r"""Initialises adapter `name` at every site `method` matches, in place.

  Args:
    model: an NNX model (any `nnx.Module`), possibly holding adapters already.
    name: the new adapter's name (a key in the graph: no `/`).
    method: a method config (e.g. `get_method('houlsby', sites=((r'layers/\d+/mlp/out', 'output'),))`).
    rng: PRNG key of the adapter's init.
    *sample_args, **sample_kwargs: one call of the model, run abstractly (`jax.eval_shape`) for the
      sites' input and output shapes only.
    block_pattern: a regex whose first group is a site's block index (for `method.leave_out`); by
      default blocks are read from the graph (`adapters_jax.splicing.transformer_blocks`).
    lora_follows_kernel: on a sharded model, LoRA's A/B follow the split of their site's kernel
      instead of being replicated (`adapters_jax.nnx.sharding`).

  Returns:
    The new adapter's spec. The model starts running it only once `set_active` names it.

  Raises:
    SiteMatchError: a site pattern matched no module (the message lists candidate paths).
    ValueError: the name is taken, the method asks for adapter dropout, a matched module was
      not called with one array giving one array, or the method reads its sites' kernels (DoRA,
      LoRA's PiSSA/OLoRA inits, which also replace the kernel by the residual W - s A B) and a
      site's kernel layout is unknown (`adapters_jax.nnx.site_kernel`).
  """
  check_name(name)
  if any(rule.placement == 'keys_values' for rule in method.site_rules()):
    raise ValueError(f'{type(method).__name__} extends attention keys and values (placement '
                     'keys_values), which the NNX splice does not run; splice it into one of '
                     "adapters_jax.models' Linen backbones with adapters_jax.add_adapter.")
  if method.lengthens_sequence:
    raise ValueError(f'{type(method).__name__} lengthens the input sequence, which NNX hosts do not '
                     'follow with their masks; splice it into one of our Linen backbones with '
                     'adapters_jax.add_adapter.')
  if getattr(method, 'dropout', 0.0):
    raise ValueError(f'Adapter dropout (dropout={method.dropout}) does not run on NNX models: their '
                     'adapters run deterministically. Pass dropout=0.0.')
  taken = [spec.name for spec in adapter_specs(model)]
  if name in taken:
    raise ValueError(f'An adapter named {name!r} is spliced already (spliced: {taken}); '
                     'remove_adapter it first or choose another name.')
  current = active(model), skipped_layers(model)
  modules = module_paths(model)
  matched = match_sites(method.site_rules(), list(modules))
  shapes = _probe(model, {p: modules[p] for p in matched}, sample_args, sample_kwargs)
  classes = {p: adapted_site.original_class(m).__name__ for p, m in modules.items()}
  blocks = {p: block_index(p, classes, block_pattern) for p in matched}
  if method.leave_out and not any(b is not None for b in blocks.values()):
    raise ValueError(no_blocks_message(f'leave_out={tuple(method.leave_out)}', list(matched)))

  shared_key, site_key = jax.random.split(rng)
  shared_module = method.make_shared_module()
  shared = None if shared_module is None else shared_module.init(shared_key)['params']
  shared_vars = None if shared is None else adapted_site.to_variables(shared)  # one object, every site
  sites, keys = [], []
  for index, (path, rule) in enumerate(matched.items()):
    if blocks[path] is not None and blocks[path] in method.leave_out:
      continue
    in_shape, out_shape, in_ndim, out_ndim = shapes[path]
    sites.append(SiteInfo(path=path, placement=rule.placement,
                          in_features=math.prod(in_shape[len(in_shape) - in_ndim:]),
                          out_features=math.prod(out_shape[len(out_shape) - out_ndim:]),
                          layer=blocks[path]))
    keys.append(jax.random.fold_in(site_key, index))
  reads_kernel = method.reads_site_params or method.changes_base
  if reads_kernel:  # DoRA, PiSSA/OLoRA: the site's own kernel, read as [in, out]
    site_kernel.check_layouts([(modules[s.path], s) for s in sites], type(method).__name__)
    sites = [dataclasses.replace(s, kernel_layout='in_out') for s in sites]
  kernels = [site_kernel.read_kernel(modules[s.path], s) if reads_kernel else None for s in sites]
  for site, params in zip(sites, _init_sites(method, sites, keys, shared, kernels), strict=True):
    if method.changes_base:  # PiSSA/OLoRA: the kernel keeps only what the adapter did not take
      host = site_kernel.host_params(modules[site.path], site)
      site_kernel.write_host_params(modules[site.path], method.unmerge(host, params, site))
    held = adapted_site.to_variables(params)
    if shared_vars is not None:
      held[SHARED_KEY] = shared_vars
    module = modules[site.path]
    if not adapted_site.is_adapted(module):
      adapted_site.adapt(module, site.path)
      module.adapter_feature_ndims = shapes[site.path][2:]
      module.adapter_active, module.adapter_skip_layers = current  # every site runs the same choice
    module.adapters[name] = held
    sharding.place_adapter(module, name, lora_follows_kernel)
    module.adapter_slots = module.adapter_slots + (SiteSlot(name, method, site),)
  _unadapt_unused(modules.values())
  if not sites:
    raise ValueError(f'Adapter {name!r} got no site: every matched layer is in leave_out='
                     f'{method.leave_out}.')
  return AdapterSpec(name, method, tuple(sites), tuple(() for _ in sites))


def _init_sites(method: MethodConfig, sites: list[SiteInfo], keys: list[jax.Array], shared: Any,
                kernels: list[jax.Array | None]) -> list[dict[str, Any]]:
  """Each site's initial params (Linen `init` of `method.make_module(site)`), in one jitted call:
  one compilation instead of an eager dispatch of every initialiser op at every site. `kernels`:
  each site's kernel [in, out] for the methods that read it (`site_params=`), else None."""

  def init_all(keys, shared, kernels):
    return [method.make_module(site).init(
        key, jnp.zeros((1, site.features), jnp.float32), shared=shared,
        **({} if kernel is None else {'site_params': {'kernel': kernel}}))['params']
            for site, key, kernel in zip(sites, keys, kernels, strict=True)]

  return jax.jit(init_all)(keys, shared, kernels)


def _probe(model: nnx.Module, matched: dict[str, nnx.Module], args, kwargs) -> dict[str, tuple]:
  """`{path: (input shape, output shape, input feature axes, output feature axes)}` of the matched
  modules, from one abstract call of the model."""
  fresh = [m for m in matched.values() if not adapted_site.is_adapted(m)]
  for path, module in matched.items():
    adapted_site.adapt(module, path)
  graphdef, state = nnx.split(model)

  def call(state):
    return nnx.merge(graphdef, state)(*args, **kwargs)

  record: dict[str, tuple] = {}
  adapted_site.set_probe(record)
  try:
    jax.eval_shape(call, state)
  finally:
    adapted_site.set_probe(None)
    _unadapt_unused(fresh)
  bad = [p for p in matched if p not in record or record[p][0] is None or record[p][1] is None]
  if bad:
    raise ValueError(f'Sites {bad} were not called with one array giving one array in the sample '
                     'call; choose sites that are (a projection, not a container).')
  return record


def _unadapt_unused(modules) -> None:
  for module in modules:
    if adapted_site.is_adapted(module) and not module.adapter_slots:
      adapted_site.unadapt(module)


def remove_adapter(model: nnx.Module, name: str) -> None:
  """Removes adapter `name` (its leaves and slots) in place; a choice that ran it is reset to the
  base model. Merged adapters must be unmerged first; one that took part of its sites' kernels at
  init (PiSSA/OLoRA) is refused (without it the base is not the base)."""
  spec = find_adapter(model, name)
  if spec.merged:
    raise ValueError(f'Adapter {name!r} is merged into the base weights; unmerge_adapter it before '
                     'removing it (its update would stay in the base).')
  if spec.method.changes_base:
    raise ValueError(f'Adapter {name!r} took part of its sites\' kernels at init (PiSSA/OLoRA), so '
                     'without it the base is not the base; merge_adapter it to keep the fine-tuned '
                     'weights, or build the base again.')
  detach_adapter(model, name)


def detach_adapter(model: nnx.Module, name: str) -> None:
  """`remove_adapter` without its checks: the caller answers for the base weights (a restore that
  failed writes the base kernels back itself)."""
  if name in composition.adapter_names(active(model)):
    set_active(model, None)
  for module in adapted_sites(model).values():
    if any(slot.name == name for slot in module.adapter_slots):
      del module.adapters[name]
      module.adapter_slots = tuple(s for s in module.adapter_slots if s.name != name)
  _unadapt_unused(adapted_sites(model).values())


def find_adapter(model: nnx.Module, name: str) -> AdapterSpec:
  """The spec of adapter `name`; a KeyError lists the spliced ones."""
  specs = adapter_specs(model)
  for spec in specs:
    if spec.name == name:
      return spec
  raise KeyError(f'No adapter named {name!r}; spliced adapters: {[s.name for s in specs]}.')


def set_active(model: nnx.Module, active: Any, skip_layers: int | Sequence[int] = 0) -> None:
  """Which adapters run from now on, at every site: a name, a tuple of names / `Stack` (one after
  another), `Average(...)`, `Fuse(...)` or a fusion's name (AdapterFusion, spliced by
  `adapters_jax.nnx.fusion.add_fusion`), `PerExample(...)` (each row its own branch; call the model
  inside `adapter_index`), `Parallel(...)` (every branch on the whole batch; call the model through
  `run_parallel`), or None (the base model). Validated against the spliced adapters.

  Args:
    skip_layers: AdapterDrop (Rueckle et al. 2021): no adapter runs in the first `k` transformer
      blocks (an int) or in the given block indices (a sequence), as `Spliced.apply(...,
      skip_layers=)` on a Linen model; refused when no site of the choice is inside a block.

  The choice is a static attribute of each site, so a function jitted with `nnx.jit` is traced
  again for a new choice instead of running a stale one.
  """
  specs = adapter_specs(model)
  node = composition.validate(composition.normalize(active), specs)
  skipped = interception.skip_layer_set(skip_layers)
  if node is not None and skipped:
    interception.compile_sites(node, specs, skipped)  # the Linen checks (sites inside blocks)
  for module in adapted_sites(model).values():
    module.adapter_active = node
    module.adapter_skip_layers = skipped


def active(model: nnx.Module) -> Any:
  """The composition that runs now (None: the base model)."""
  sites = adapted_sites(model)
  return next(iter(sites.values())).adapter_active if sites else None


def skipped_layers(model: nnx.Module) -> tuple[int, ...]:
  """The blocks in which no adapter runs now (`set_active`'s `skip_layers`)."""
  sites = adapted_sites(model)
  return next(iter(sites.values())).adapter_skip_layers if sites else ()


def run_parallel(model: nnx.Module, *args, method: Callable[..., Any] | None = None,
                 **kwargs) -> Any:
  """Calls the model once with every branch of its `Parallel` choice on the whole batch.

  Args:
    model: the model; its choice (`set_active`) must be a `Parallel`.
    *args, **kwargs: the model's arguments; the first is an array [batch, ...], and every array
      argument with that leading axis is repeated once per branch.
    method: what to call instead of `model(...)` (e.g. `model.hidden`).

  Returns:
    The model's output with every leaf [n_branches, batch, ...] (branch i = the model run with
    branch i alone), as `Spliced.apply(..., active=Parallel(...))` returns it.
  """
  node = active(model)
  if not isinstance(node, composition.Parallel):
    raise composition.CompositionError(
        f'run_parallel needs a Parallel choice; this model runs {node!r}. '
        'set_active(model, Parallel(...)) first.')
  n = len(node.children)
  args, kwargs, index = linen_splice.repeat_batch(args, kwargs, n)
  previous = adapted_site.set_index(index)
  try:
    out = (method or model)(*args, **kwargs)
  finally:
    adapted_site.set_index(previous)
  return linen_splice.split_batch(out, n)


@contextlib.contextmanager
def adapter_index(model: nnx.Module, index: Any) -> Iterator[None]:
  """Each row's branch of the `PerExample` choice that runs, for the calls in the block.

  Args:
    model: the model (its choice must be a `PerExample`).
    index: int array [batch]: row i runs branch `index[i]`, -1 the base model (see
      `adapters_jax.splicing.composition.choice_index`). A traced array is fine: enter the block
      inside the jitted function, so one compilation serves every index.
  """
  if not isinstance(active(model), composition.PerExample):
    raise composition.CompositionError(
        f'adapter_index needs a PerExample choice; this model runs {active(model)!r}. '
        'set_active(model, PerExample(...)) first.')
  previous = adapted_site.set_index(jnp.asarray(index, jnp.int32))
  try:
    yield
  finally:
    adapted_site.set_index(previous)


@contextlib.contextmanager
def activated(model: nnx.Module, choice: Any, skip_layers: int | Sequence[int] = 0
              ) -> Iterator[None]:
  """`set_active(model, choice, skip_layers)` for a block of calls; the previous choice afterwards."""
  previous = active(model), skipped_layers(model)
  set_active(model, choice, skip_layers)
  try:
    yield
  finally:
    set_active(model, *previous)
