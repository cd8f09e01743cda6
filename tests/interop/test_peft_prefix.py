"""Prefix tuning with positions='after_prefix' <-> PEFT's PREFIX_TUNING (peft on transformers'
PyTorch BERT/RoBERTa, GPT-2, Llama of the same weights): our export gives our logits and greedy
tokens in PEFT, PEFT's own save gives PEFT's logits here; a prefix that keeps the real tokens'
positions (positions='none') and T5 are refused by name."""

import json
import subprocess
import sys

import jax
import numpy as np
import peft
import pytest
import torch
from safetensors.numpy import load_file

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint
from adapters_jax.models import GenerationConfig, generate
from tests.interop import conftest as encoders
from tests.interop import lm_bases

P = 3
STEPS = 6


def _their_greedy(model, family):
  ids, mask = (torch.tensor(a, dtype=torch.long) for a in lm_bases.inputs(family))
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS,
                         do_sample=False, pad_token_id=0)
  return out[:, ids.shape[1]:].numpy()


def _our_greedy(spliced, params, family, name='task'):
  ids, mask = lm_bases.inputs(family)
  return np.asarray(generate(spliced, params, ids, mask, GenerationConfig(max_new_tokens=STEPS),
                             active=name).tokens)


@pytest.mark.parametrize('family,method', [('gpt2', 'prefix_tuning_flat'), ('gpt2', 'prefix_tuning'),
                                           ('llama', 'prefix_tuning')])
def test_lm_prefix_loads_in_peft_with_our_logits_and_greedy_tokens(tmp_path, lm_base_dir, family, method):
  spliced, params, checkpoint = lm_bases.save_trained(
      tmp_path / 'run', lm_base_dir(family), family, 'task',
      lm_bases.get_method(method, prefix_length=P, bottleneck_size=8, positions='after_prefix'))
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  config = json.loads((exported / 'adapter_config.json').read_text())
  model = lm_bases.torch_base(lm_base_dir(family), family)
  kv_heads = getattr(model.config, 'num_key_value_heads', model.config.num_attention_heads)
  width = kv_heads * model.config.hidden_size // model.config.num_attention_heads
  assert (config['peft_type'], config['task_type'], config['num_virtual_tokens']) == (
      'PREFIX_TUNING', 'CAUSAL_LM', P)
  prefixes = load_file(str(exported / 'adapter_model.safetensors'))['prompt_embeddings']
  assert prefixes.shape == (P, model.config.num_hidden_layers * 2 * width)  # the MLP folded
  base = lm_bases.torch_logits(model, family)
  theirs_model = peft.PeftModel.from_pretrained(model, str(exported)).eval()
  ours = lm_bases.our_logits(spliced, params, family, 'task')
  lm_bases.assert_close(ours, lm_bases.torch_logits(theirs_model, family), base)
  np.testing.assert_array_equal(_our_greedy(spliced, params, family), _their_greedy(theirs_model, family))
