"""AdapterFusion on NNX models: fusion layers spliced beside the adapters they fuse.

    add_fusion(model, ('rt', 'tweets'), jax.random.key(0))   # bottleneck adapters, spliced already
    set_active(model, Fuse('rt', 'tweets'))                   # or the fusion's name, 'rt,tweets'
    loss = task_loss + fusion_regularization(model, 'rt,tweets')
    wrt = trained_filter(model, adapters=('rt,tweets',))       # train the fusion, freeze the rest

The checks, the sites (those of the fused adapters, output placement) and the math are the Linen
splice's (`adapters_jax.splicing.fusion_layers.fusion_sites`, `methods.fusion.AdapterFusion`, the
`FuseOp` program of `splicing.interception`); the fusion layers' leaves sit at
`<site>/adapters/<fusion name>/{query,key,value}/...` as `AdapterParam`s, the Linen layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from adapters_jax.methods.fusion import FusionConfig
from adapters_jax.nnx import adapted_site
from adapters_jax.nnx.adapted_site import SiteSlot
from adapters_jax.nnx.splice import adapted_sites, adapter_specs, find_adapter
from adapters_jax.splicing.fusion_layers import fusion_sites, init_fusion_layer
from adapters_jax.splicing.tree import AdapterSpec


def add_fusion(model: nnx.Module, adapters: Sequence[str], rng: jax.Array,
               config: FusionConfig | None = None, name: str | None = None) -> AdapterSpec:
  """Splices a fusion layer at every site of the `adapters` (bottleneck adapters), in place.

  Args:
    model: an NNX model with the adapters to fuse spliced (`adapters_jax.nnx.splice.add_adapter`).
    adapters: the fused adapters' names, in order.
    rng: PRNG key of the fusion layers' init.
    config: fusion options (default `FusionConfig(adapters=adapters)`, adapter-hub's dynamic
      fusion); its `dropout` must be 0 (NNX adapters run deterministically).
    name: the fusion's name (default `','.join(adapters)`).

  Returns:
    The fusion's spec; it runs once `set_active` names it (or `Fuse(*adapters)`).
  """
  config, name, sites = fusion_sites(adapter_specs(model), adapters, config, name)
  if config.dropout:
    raise ValueError(f'Fusion dropout (dropout={config.dropout}) does not run on NNX models: their '
                     'adapters run deterministically. Pass fusion(..., dropout=0.0).')
  modules = adapted_sites(model)
  for index, (path, (site, _)) in enumerate(sites.items()):
    params = init_fusion_layer(config.make_module(site), jax.random.fold_in(rng, index),
                               site.out_features, len(config.adapters))
    module = modules[path]
    module.adapters[name] = adapted_site.to_variables(params)
    module.adapter_slots = module.adapter_slots + (SiteSlot(name, config, site),)
  return find_adapter(model, name)


def fusion_regularization(model: nnx.Module, name: str) -> jax.Array:
  """`config.regularization * sum over sites ||V - I||^2` of fusion `name` (0 when disabled), as
  `adapters_jax.splicing.fusion_layers.fusion_regularization` on a Linen model."""
  config = find_adapter(model, name).method
  if not config.is_fusion:
    raise ValueError(f'{name!r} is not a fusion layer; spliced: '
                     f'{[s.name for s in adapter_specs(model)]}.')
  total = jnp.zeros((), jnp.float32)
  if not config.regularization or not config.value:
    return total
  for module in adapted_sites(model).values():
    if name in module.adapters:
      kernel = module.adapters[name]['value']['kernel'][...]
      total = total + jnp.sum(jnp.square(kernel - jnp.eye(kernel.shape[-1], dtype=kernel.dtype)))
  return config.regularization * total
