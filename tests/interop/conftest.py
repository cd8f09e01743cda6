"""Tiny BERT/RoBERTa checkpoints written by transformers (PyTorch, safetensors) and helpers that
compare our logits with the reference libraries' on the same adapter."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from adapters_jax import add_adapter, get_method, models, save_adapter
from adapters_jax.interop import prefix_layout
from adapters_jax.splicing import trainable

NUM_LABELS = 3
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=64, hidden_act='gelu', num_labels=NUM_LABELS)
TOLERANCE = 1e-4


@pytest.fixture(scope='session')
def base_dir(tmp_path_factory):
  """`base_dir(family)`: a tiny random transformers classifier saved as config.json + model.safetensors.

  `bert` and `roberta`; `bert-other` has the shapes of `bert` and other weights.
  """
  made = {}

  def make(family: str):
    if family not in made:
      torch.manual_seed(1 if family.endswith('-other') else 0)
      if family.startswith('bert'):
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**TINY))
      else:
        config = transformers.RobertaConfig(**TINY, pad_token_id=1, type_vocab_size=1)
        model = transformers.RobertaForSequenceClassification(config)
      directory = tmp_path_factory.mktemp(family)
      model.save_pretrained(directory, safe_serialization=True)
      made[family] = directory
    return made[family]

  return make


def inputs(family: str):
  """`(input_ids, attention_mask)` `[2, 7]` int32 with a padded second row."""
  pad = 0 if family == 'bert' else 1
  ids = np.random.default_rng(0).integers(3, TINY['vocab_size'], size=(2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  ids[1, 5:] = pad
  return ids, mask


def load_ours(directory):
  return models.load_pretrained(str(directory), head='classification', num_labels=NUM_LABELS,
                                load_tokenizer=False)


def trained_adapter(directory, family, name, method, seed=1):
  """Our base with `method` spliced as `name` and every trained leaf set to random values.

  Returns `(spliced, params, mask)`; adapters start at the identity, so random values make the test
  see every leaf.
  """
  base = load_ours(directory)
  ids, _ = inputs(family)
  spliced, params = add_adapter(base.model, base.params, name, method, jax.random.key(0), ids)
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter(name)]))
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  rng = np.random.default_rng(seed)
  for path, value in flat.items():
    if flat_mask[path]:
      noise = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
      around_one = path.endswith('/scale')  # (IA)3 vectors and layer-norm scales
      flat[path] = jnp.asarray((1.0 + noise) if around_one else noise)
  return spliced, traverse_util.unflatten_dict(flat, sep='/'), mask


def save_trained(workdir, directory, family, name, method, **method_options):
  """Trains nothing, but writes what a run's `workdir/best` holds: a `save_adapter` checkpoint."""
  spliced, params, mask = trained_adapter(directory, family, name, get_method(method, **method_options))
  checkpoint = save_adapter(workdir / 'best', spliced, params, name, mask=mask, base_name=str(directory))
  return spliced, params, checkpoint


def our_logits(spliced, params, family, name):
  ids, mask = inputs(family)
  return np.asarray(spliced.apply(params, ids, mask, active=name))  # [2, NUM_LABELS]


def torch_base(directory):
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(directory))
  return model.eval()


def torch_logits(model, family):
  ids, mask = inputs(family)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.logits.numpy()  # [2, NUM_LABELS]


def randomize_torch(model, selects, around_one=lambda name: False, seed=2):
  """Sets every parameter whose name `selects` accepts to random values (the adapter, the head);
  `around_one` picks those drawn around 1 (scaling vectors, layer-norm scales)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if selects(name):
        noise = torch.randn(param.shape, generator=generator) * 0.3
        param.copy_(1.0 + noise if around_one(name) else noise)


def assert_close(ours, theirs, base):
  """Logits agree within TOLERANCE, and the adapter really changed them (not two base models)."""
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
  assert np.abs(ours - base).max() > 1e-2, 'the adapter did not change the logits'


@pytest.fixture(scope='session')
def lm_base_dir(tmp_path_factory):
  """`lm_base_dir(family)`: a tiny random transformers decoder (`lm_bases.DECODERS`) or T5 v1.1,
  saved once per session."""
  from tests.interop.lm_bases import make_base

  made = {}

  def make(family: str):
    if family not in made:
      made[family] = make_base(family, tmp_path_factory.mktemp(family))
    return made[family]

  return make


def with_union_prefix(spliced, params, name, union, state, prefix_length):
  """`params` with the prefix member of union adapter `name` set from AdapterHub's BERT
  `state_dict` (numpy): its prefix pool mapped through the stacked prefix layout."""
  spec = spliced.adapter(name)
  keep = [i for i, s in enumerate(spec.sites) if s.placement == 'keys_values']
  prefix_spec = dataclasses.replace(spec, method=union.members[0],
                                    sites=tuple(spec.sites[i] for i in keep),
                                    stack_dims=tuple(spec.stack_dims[i] for i in keep))
  stacked = prefix_layout.from_adapterhub(state, name, prefix_length,
                                          {'self_prefix': 'encoder_prefix'})
  return prefix_layout.from_stacked(prefix_spec, params, stacked)

