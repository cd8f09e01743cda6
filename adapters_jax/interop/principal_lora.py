"""A PiSSA/OLoRA adapter as the plain LoRA that does the same on the original base (for export).

A LoRA with `init_weights` 'pissa', 'pissa_niter_<K>' or 'olora' runs beside the residual
W_res = W - s A0 B0 of each site's kernel (`methods.lora_init`), so its files alone are not a LoRA
of the base W. As PEFT's `save_pretrained(path_initial_model_for_weight_conversion=...)`, the
update it makes to W is written as an ordinary LoRA of rank 2r:

    W_res + s A B = W + s (A B - A0 B0) = W + s [A, A0] [B; -B0]     (ours: A [in, r], B [r, out])

with alpha doubled (alpha / sqrt(2) times 2 for rsLoRA) so that the scaling s stays the same. The
initial A0, B0 are rebuilt from the base the record names (the same decomposition `add_adapter`
made), after checking its weights are the adapter's.

    plain = as_plain_lora(read_checkpoint('workdirs/rte-pissa/best'))
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from adapters_jax import models
from adapters_jax.interop.naming import InteropError
from adapters_jax.interop.portable import PortableAdapter, check_base, num_labels
from adapters_jax.models.encoder_config import MODEL_TYPES as ENCODER_MODEL_TYPES
from adapters_jax.models.hf_files import read_hf_config
from adapters_jax.splicing import splice, tree


def as_plain_lora(adapter: PortableAdapter) -> PortableAdapter:
  """`adapter` unchanged unless its method changes its base (PiSSA, OLoRA); then the rank-2r LoRA
  of the original base with the same update (see the module docstring).

  Raises:
    InteropError: the record names no base, or the base found has other weights.
  """
  method = adapter.method
  if not method.changes_base:
    return adapter
  if method.kind != 'lora':
    raise InteropError(f'{method.kind} adapters that change their base cannot be exported.')
  initial = initial_leaves(adapter)
  leaves = dict(adapter.leaves)
  for path, value in initial.items():
    if path.endswith('/lora_a'):
      leaves[path] = np.concatenate([adapter.leaves[path], value], axis=-1)  # [in, 2r]
    else:
      leaves[path] = np.concatenate([adapter.leaves[path], -value], axis=-2)  # [2r, out]
  alpha = method.alpha * (math.sqrt(2.0) if method.use_rslora else 2.0)
  plain = dataclasses.replace(method, rank=2 * method.rank, alpha=alpha, init_weights='default')
  return dataclasses.replace(adapter, method=plain, leaves=leaves)


def initial_leaves(adapter: PortableAdapter) -> dict[str, np.ndarray]:
  """`{our path: array}`: adapter `adapter.name`'s A0 and B0 as `add_adapter` initialises them on
  the base its record names."""
  base_name = adapter.base.get('name')
  if not base_name:
    raise InteropError(f'Adapter {adapter.name!r} has init_weights={adapter.method.init_weights!r}: '
                       'its initial A and B come from the base, but its record names none.')
  model_type = read_hf_config(models.resolve_checkpoint_dir(base_name)).get('model_type')
  encoder = model_type in ENCODER_MODEL_TYPES
  pre = models.load_pretrained(base_name, head='classification' if encoder else None,
                               num_labels=num_labels(adapter) if encoder else None,
                               load_tokenizer=False)
  check_base(adapter, pre, base_name)
  ids = jnp.zeros((1, 4), jnp.int32)  # [batch, seq]: shapes for the splice only
  sample = (ids, ids, ids) if model_type == 't5' else (ids,)  # T5: ids, mask, decoder ids
  _, params = splice.add_adapter(pre.model, pre.params, adapter.name, adapter.method,
                                 jax.random.key(0), *sample)
  return {p: np.asarray(v, np.float32) for p, v in tree.adapter_leaves(params, adapter.name).items()}
