"""Prefix tuning moved from AdapterHub's `adapters` 1.3.0 (reparameterised and flat) into ours gives
AdapterHub's logits, and back to the stacked layout unchanged; PEFT's saved prefix lands as the keys
and values PEFT feeds each layer."""

import adapters
import jax
import numpy as np
import pytest

from adapters_jax import add_adapter, eject_adapter, get_method
from adapters_jax.interop import prefix_layout
from tests.interop.conftest import (
  assert_close,
  inputs,
  load_ours,
  our_logits,
  randomize_torch,
  torch_base,
  torch_logits,
)

P, BOTTLENECK = 4, 16


@pytest.mark.parametrize('flat', [False, True], ids=['prefix_tuning', 'prefix_tuning_flat'])
def test_adapterhub_prefix_on_bert_gives_their_logits(base_dir, flat):
  model = torch_base(base_dir('bert'))
  base = torch_logits(model, 'bert')
  adapters.init(model)
  model.add_adapter('task', config=adapters.PrefixTuningConfig(prefix_length=P, flat=flat,
                                                               bottleneck_size=BOTTLENECK))
  randomize_torch(model, lambda n: n.startswith('classifier'))
  model.set_active_adapters('task')
  model.eval()
  theirs = torch_logits(model, 'bert')
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  head = {k: v for k, v in state.items() if k.startswith('classifier.')}

  pretrained = load_ours(base_dir('bert'))
  ids, _ = inputs('bert')
  method = get_method('prefix_tuning_flat' if flat else 'prefix_tuning', prefix_length=P,
                      bottleneck_size=BOTTLENECK)
  spliced, params = add_adapter(pretrained.model, pretrained.params, 'task', method,
                                jax.random.key(0), ids)
  # An encoder-only model's self-attention is AdapterHub's `self_prefix`, our `encoder_prefix`.
  stacked = prefix_layout.from_adapterhub(state, 'task', P, {'self_prefix': 'encoder_prefix'})
  params = prefix_layout.from_stacked(spliced.adapter('task'), params, stacked)
  params = dict(params, classifier={'dense': {'kernel': head['classifier.weight'].T,
                                               'bias': head['classifier.bias']}})
  ours = our_logits(spliced, params, 'bert', 'task')
  assert_close(ours, theirs, base)
  back = prefix_layout.to_stacked(spliced.adapter('task'), params)
  for location, tensors in stacked.items():
    for key, value in tensors.items():
      np.testing.assert_array_equal(back[location][key], value)
  if not flat:  # ejected, the flat form gives the same logits
    ejected, flat_params = eject_adapter(spliced, params, 'task')
    np.testing.assert_allclose(our_logits(ejected, flat_params, 'bert', 'task'), theirs, atol=1e-4)


def test_peft_prompt_embeddings_map_to_the_same_layer_keys_and_values(tmp_path):
  """PEFT's saved prefix (`prompt_embeddings` [P, L * 2 * hidden]) lands so that each of our sites
  holds the keys and values PEFT feeds that layer as `past_key_values`. (PEFT also moves the real
  tokens' positions by P; ours keep them, so the logits differ by design, not by layout.)"""
  import peft
  import torch

  from adapters_jax.models import load_pretrained
  from tests.models import decoder_checkpoints as dc

  torch_model = dc.torch_model('gpt2')
  dc.save(torch_model, tmp_path)
  peft_model = peft.get_peft_model(torch_model, peft.PrefixTuningConfig(task_type='CAUSAL_LM',
                                                                        num_virtual_tokens=P))
  with torch.no_grad():
    embeddings = peft_model.get_prompt_embedding_to_save('default').numpy()  # [P, L * 2 * 64]
    layers = peft_model.get_prompt(batch_size=1).to_legacy_cache()  # per layer ([1, H, P, D], ..)
  pre = load_pretrained(str(tmp_path), load_tokenizer=False)
  ids, mask = dc.left_padded([5, 3], 5, pre.config.vocab_size)
  spliced, params = add_adapter(pre.model, pre.params, 'a',
                                get_method('prefix_tuning_flat', prefix_length=P),
                                jax.random.key(0), ids, mask)
  params = prefix_layout.from_stacked(spliced.adapter('a'), params,
                                      {'self_prefix': {'prefixes': embeddings}})
  heads, dim = pre.config.num_kv_heads, pre.config.head_dim
  for i, (keys, values) in enumerate(layers):
    ours = np.asarray(params['decoder'][f'layer_{i}']['attention']['prefix']['adapters']['a']
                      ['prefixes']).reshape(P, 2, heads, dim)
    np.testing.assert_array_equal(ours[:, 0], keys[0].numpy().transpose(1, 0, 2))
    np.testing.assert_array_equal(ours[:, 1], values[0].numpy().transpose(1, 0, 2))
