"""AdapterFusion over spliced adapters: splice, regularise, inspect (saved by `fusion_checkpoint`).

    spliced, params = add_fusion(spliced, params, ('rt', 'tweets'), jax.random.key(0))
    logits = spliced.apply(params, ids, mask, active=Fuse('rt', 'tweets'))
    loss = task_loss + fusion_regularization(spliced, params, 'rt,tweets')
    logits, state = spliced.apply(params, ids, mask, active='rt,tweets', mutable=['intermediates'])
    weights = fusion_attentions(state['intermediates'], 'rt,tweets')   # {site: [B, L, 2]}
    plot_fusion_attention(weights, 'attention.png', mask=mask)

The fusion layers live at `<site>/adapters/<fusion name>/{query,key,value}/...` (default name: the
fused names joined by commas, as in adapter-hub) and form an `AdapterSpec` whose method is a
`FusionConfig`, so `trainable.adapter_rules([spliced.adapter(name)])` trains only them (plus the
head), and the fused adapters stay frozen.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax.methods.base import SiteInfo
from adapters_jax.methods.fusion import FusionConfig, fusion_attention_key
from adapters_jax.splicing import splice, trainable
from adapters_jax.splicing.tree import (
  AdapterSpec,
  Params,
  adapter_leaves,
  adapter_path,
  check_name,
  find_spec,
)


def add_fusion(spliced: splice.Spliced, params: Params, adapters: Sequence[str], rng: jax.Array,
               config: FusionConfig | None = None,
               name: str | None = None) -> tuple[splice.Spliced, Params]:
  """Splices a fusion layer at every site of the `adapters` (bottleneck adapters, already spliced).

  Args:
    spliced, params: the model with the adapters to fuse.
    adapters: the fused adapters' names.
    rng: PRNG key for the fusion layers' init.
    config: fusion options (default `FusionConfig(adapters=adapters)`); its `adapters` must match.
    name: the fusion's name (default: `','.join(adapters)`).

  Returns:
    The spliced model with the fusion added, and the new params.
  """
  config, name, sites = fusion_sites(spliced.adapters, adapters, config, name)
  if adapter_leaves(params, name):
    raise ValueError(f'An adapter named {name!r} is already in the params; give the fusion its own '
                     'name=.')
  flat = traverse_util.flatten_dict(params, sep='/')
  new_flat = dict(flat)
  for index, (path, (site, dims)) in enumerate(sites.items()):
    module = config.make_module(site)
    leaves = init_fusion_layer(module, jax.random.fold_in(rng, index), site.out_features, len(adapters), dims)
    for leaf_path, leaf in traverse_util.flatten_dict(leaves, sep='/').items():
      new_flat[adapter_path(path, name, leaf_path)] = leaf
  spec = AdapterSpec(name=name, method=config, sites=tuple(s for s, _ in sites.values()),
                     stack_dims=tuple(d for _, d in sites.values()))
  return (dataclasses.replace(spliced, adapters=spliced.adapters + (spec,)),
          traverse_util.unflatten_dict(new_flat, sep='/'))


def fusion_sites(specs: Sequence[AdapterSpec], adapters: Sequence[str],
                 config: FusionConfig | None, name: str | None
                 ) -> tuple[FusionConfig, str, dict[str, tuple[SiteInfo, tuple[int, ...]]]]:
  """The checks of a new fusion over `adapters` (of the spliced `specs`) and its sites.

  Returns:
    `(config, name, {site path: (fusion site, stack dims)})`: the config (default
    `FusionConfig(adapters=adapters)`), the name (default `','.join(adapters)`), and one fusion site
    (output placement, the site's output width) per site of any fused adapter.
  """
  adapters = tuple(adapters)
  if not adapters:
    raise ValueError('add_fusion needs the names of the adapters to fuse.')
  config = config or FusionConfig(adapters=adapters)
  if tuple(config.adapters) != adapters:
    raise ValueError(f'config.adapters={config.adapters} differs from adapters={adapters}.')
  name = name or ','.join(adapters)
  check_name(name)
  names = [spec.name for spec in specs]
  if name in names:
    raise ValueError(f'An adapter named {name!r} is already spliced (names: {names}); give the '
                     'fusion its own name=.')
  sites: dict[str, tuple[SiteInfo, tuple[int, ...]]] = {}
  for adapter in adapters:
    spec = find_spec(specs, adapter)
    if spec.method.no_site_output:
      raise ValueError(f'AdapterFusion cannot fuse {adapter!r}: {spec.method.no_site_output}.')
    if not spec.method.fusable:
      raise ValueError(f'AdapterFusion fuses bottleneck adapters (houlsby, pfeiffer, parallel); '
                       f'{adapter!r} is a {spec.method.kind} adapter. Combine those with '
                       'composition.Average or Stack instead.')
    if spec.merged:
      raise ValueError(f'Adapter {adapter!r} is merged into the base; unmerge it to fuse it.')
    for site, dims in zip(spec.sites, spec.stack_dims, strict=True):
      if site.path not in sites:
        fused = SiteInfo(path=site.path, placement='output', in_features=site.out_features,
                         out_features=site.out_features, layer=site.layer)
        sites[site.path] = (fused, dims)
  return config, name, sites


def init_fusion_layer(module, rng, features: int, k: int, dims: tuple[int, ...] = ()) -> Params:
  """One site's fusion-layer params (`module`: `FusionConfig.make_module`) over `k` adapters of
  width `features`; with `dims`, stacked with a leading layer axis per scanned dim."""
  query = jnp.zeros((1, features), jnp.float32)
  deltas = jnp.zeros((1, k, features), jnp.float32)

  def init(key):
    return module.init(key, query, deltas)['params']

  if not dims:
    return init(rng)
  keys = jax.random.split(rng, int(np.prod(dims)))
  stacked = jax.vmap(init)(keys)
  return jax.tree.map(lambda a: a.reshape(tuple(dims) + a.shape[1:]), stacked)


def fusion_regularization(spliced: splice.Spliced, params: Params, name: str) -> jax.Array:
  """`config.regularization * sum over sites ||V - I||^2` of fusion `name` (0 when disabled)."""
  config = spliced.adapter(name).method
  if not config.is_fusion:
    raise ValueError(f'{name!r} is not a fusion layer; spliced: {list(spliced.names)}.')
  if not config.regularization or not config.value:
    return jnp.zeros((), jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for path, leaf in adapter_leaves(params, name).items():
    if path.endswith('/value/kernel'):
      eye = jnp.eye(leaf.shape[-1], dtype=leaf.dtype)
      total = total + jnp.sum(jnp.square(leaf - eye))
  return config.regularization * total


def fusion_attentions(intermediates: Mapping[str, Any], name: str) -> dict[str, np.ndarray]:
  """`{site path: attention [B, L, K]}` of fusion `name` from `apply(..., mutable=['intermediates'])`.

  Sites are in host call order; each array's last axis follows the fusion's adapter order.
  """
  key = fusion_attention_key(name)
  flat = traverse_util.flatten_dict(dict(intermediates), sep='/')
  out = {}
  for path, value in flat.items():
    site, _, leaf = path.rpartition('/')
    if leaf == key:
      out[site] = np.asarray(value[0] if isinstance(value, tuple) else value)
  if not out:
    raise ValueError(f'No attention weights of fusion {name!r} in these intermediates; apply with '
                     f"active=Fuse(...) or {name!r} and mutable=['intermediates'] (unscanned layers).")
  return out


def mean_attention(attentions: Mapping[str, np.ndarray], mask: Any = None) -> dict[str, np.ndarray]:
  """Per site, the attention averaged over examples and (unpadded) tokens: `{site: [K]}`."""
  out = {}
  for site, probs in attentions.items():
    probs = np.asarray(probs, np.float64)  # [B, L, K]
    if mask is None:
      out[site] = probs.reshape(-1, probs.shape[-1]).mean(0)
    else:
      # A classification model's last layer computes position 0 only ([B, 1, K]).
      weights = np.asarray(mask, np.float64)[:, :probs.shape[1], None]  # [B, L, 1]
      out[site] = (probs * weights).sum((0, 1)) / np.maximum(weights.sum((0, 1)), 1.0)
  return out


def plot_fusion_attention(attentions: Mapping[str, np.ndarray], path: str | os.PathLike,
                          adapters: Sequence[str] | None = None, mask: Any = None,
                          title: str = 'AdapterFusion attention') -> str:
  """Writes a PNG heat map: one row per site (layer), one column per fused adapter, cell = mean
  attention weight over the batch's tokens. Matplotlib with the Agg backend (no display)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  means = mean_attention(attentions, mask)
  sites = list(means)
  table = np.stack([means[s] for s in sites])  # [sites, K]
  adapters = list(adapters) if adapters is not None else [str(i) for i in range(table.shape[1])]
  fig, ax = plt.subplots(figsize=(1.6 + 1.2 * table.shape[1], 0.9 + 0.35 * len(sites)))
  image = ax.imshow(table, vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto')
  ax.set_xticks(range(len(adapters)), adapters, rotation=20, ha='right', fontsize=8)
  ax.set_yticks(range(len(sites)), [s.replace('encoder/', '') for s in sites], fontsize=7)
  for i in range(table.shape[0]):
    for j in range(table.shape[1]):
      ax.text(j, i, f'{table[i, j]:.2f}', ha='center', va='center', fontsize=7,
              color='white' if table[i, j] < 0.6 else 'black')
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.05)
  fig.tight_layout()
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path



def fusion_rules(spliced: splice.Spliced, name: str, train_head: bool = True):
  """Trainable rules: the fusion layers (and the head); everything else, fused adapters included,
  frozen."""
  return trainable.adapter_rules([spliced.adapter(name)], train_head=train_head)
