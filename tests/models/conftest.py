"""Shared fixtures: tiny HF configs and an independent writer of HF PyTorch-named safetensors.

The writer goes from transformers' own Flax param trees to PyTorch names by the generic
Flax->PyTorch convention (kernel -> weight transposed, scale/embedding -> weight), which is
independent of our mapping table; `write_hf_checkpoint` verifies it by reloading the directory
with transformers' own loader.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=64, hidden_act='gelu')


def flax_to_pt_names(params) -> dict[str, np.ndarray]:
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, np.float32)
    *prefix, leaf = path
    if leaf == 'kernel':
      value = value.T
    if leaf in ('kernel', 'scale', 'embedding'):
      leaf = 'weight'
    out['.'.join([*prefix, leaf])] = np.ascontiguousarray(value)
  return out


def write_hf_checkpoint(hf_model, directory: pathlib.Path) -> pathlib.Path:
  """Saves `hf_model` (a transformers Flax model) as config.json + PyTorch-named safetensors."""
  directory.mkdir(parents=True, exist_ok=True)
  hf_model.config.to_json_file(str(directory / 'config.json'))
  save_file(flax_to_pt_names(hf_model.params), str(directory / 'model.safetensors'),
            metadata={'format': 'pt'})
  reloaded = type(hf_model).from_pretrained(str(directory))
  same = jax.tree_util.tree_map(np.array_equal, hf_model.params, reloaded.params)
  assert all(jax.tree_util.tree_leaves(same)), 'test writer disagrees with transformers'
  return directory


@pytest.fixture
def write_checkpoint():
  return write_hf_checkpoint


@pytest.fixture
def tiny_hf_config():
  return dict(TINY)


def read_json(path):
  return json.loads(pathlib.Path(path).read_text())
