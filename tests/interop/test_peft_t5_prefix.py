"""Prefix tuning on T5 <-> PEFT's PREFIX_TUNING (peft on transformers' PyTorch T5 v1.1 of the same
weights, 3 encoder and 2 decoder layers): PEFT feeds the prefix to the decoder's self-attention as
past_key_values (keys at relative positions 0..P-1, real queries at P+i) and none to the encoder
or the cross-attention. Our decoder prefix with positions='after_prefix' gives PEFT's logits and
greedy tokens both ways; a prefix in T5's other locations is refused naming them."""

import functools
import json

import numpy as np
import peft
import pytest
import torch
from safetensors.numpy import load_file

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint
from adapters_jax.models.t5_decoding import greedy_generate
from tests.interop import lm_bases

P = 3
STEPS = 5
DECODER_ONLY = dict(encoder_prefix=False, cross_prefix=False, positions='after_prefix')


def _their_greedy(model):
  """Greedy tokens `[2, STEPS]` of PEFT's forward, the whole decoder input recomputed each step.
  (PEFT's own `generate` on T5 differs from its forward: it injects the prefix after transformers
  has set the cache positions, so there the queries sit at t, not P+t (checked on peft 0.21.2);
  its forward, which training and the logits use, counts the prefix.)"""
  ids, mask, _ = (torch.tensor(a, dtype=torch.long) for a in lm_bases.inputs('t5'))
  decoder = torch.zeros((ids.shape[0], 1), dtype=torch.long)  # the start token
  with torch.no_grad():
    for _ in range(STEPS):
      logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
      decoder = torch.cat([decoder, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
  return decoder[:, 1:].numpy()


def _our_greedy(spliced, params):
  ids, mask, _ = lm_bases.inputs('t5')
  apply = functools.partial(spliced.apply, active='task')
  return np.asarray(greedy_generate(apply, spliced.model.config, params, ids, mask, STEPS))


@pytest.mark.parametrize('method', ['prefix_tuning_flat', 'prefix_tuning'])
def test_t5_decoder_prefix_loads_in_peft_with_our_logits_and_greedy_tokens(tmp_path, lm_base_dir, method):
  # Bugs caught: prefix keys without relative bias (or at other positions), the real queries not
  # moved P on, layers or keys/values swapped, PEFT's extra encoder-depth layers mis-sized.
  directory = lm_base_dir('t5')
  spliced, params, checkpoint = lm_bases.save_trained(
      tmp_path / 'run', directory, 't5', 'task',
      lm_bases.get_method(method, prefix_length=P, bottleneck_size=8, **DECODER_ONLY))
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  config = json.loads((exported / 'adapter_config.json').read_text())
  model = lm_bases.torch_base(directory, 't5')
  assert (config['peft_type'], config['task_type'], config['num_transformer_submodules']) == (
      'PREFIX_TUNING', 'SEQ_2_SEQ_LM', 2)
  width = model.config.num_heads * model.config.d_kv
  prefixes = load_file(str(exported / 'adapter_model.safetensors'))['prompt_embeddings']
  assert prefixes.shape == (P, model.config.num_layers * 2 * width)  # PEFT counts the encoder's
  base = lm_bases.torch_logits(model, 't5')
  theirs_model = peft.PeftModel.from_pretrained(model, str(exported)).eval()
  lm_bases.assert_close(lm_bases.our_logits(spliced, params, 't5', 'task'),
                        lm_bases.torch_logits(theirs_model, 't5'), base)
  np.testing.assert_array_equal(_our_greedy(spliced, params), _their_greedy(theirs_model))


@pytest.mark.parametrize('projection', [False, True])
def test_peft_t5_prefix_imports_with_their_logits_and_greedy_tokens(tmp_path, lm_base_dir, projection):
  directory = lm_base_dir('t5')
  model = lm_bases.torch_base(directory, 't5')
  base = lm_bases.torch_logits(model, 't5')
  # token_dim: PEFT's default is d_model, which this tiny T5's attention width (heads x d_kv) is not.
  peft_model = peft.get_peft_model(model, peft.PrefixTuningConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=P, prefix_projection=projection,
      encoder_hidden_size=8, token_dim=model.config.num_heads * model.config.d_kv))
  generator = torch.Generator().manual_seed(3)
  with torch.no_grad():
    for name, param in peft_model.named_parameters():
      if 'prompt_encoder' in name:
        param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
  peft_model.save_pretrained(str(tmp_path / 'saved'))
  peft_model.eval()
  theirs = lm_bases.torch_logits(peft_model, 't5')
  checkpoint = import_checkpoint(tmp_path / 'saved', 'peft', model=str(directory), out=tmp_path / 'ours',
                                 name='task')
  pretrained = lm_bases.load_ours(directory)
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params,
                                    *lm_bases.inputs('t5'))
  method = spliced.adapter('task').method
  assert (method.flat, method.positions, method.encoder_prefix, method.self_prefix,
          method.cross_prefix) == (True, 'after_prefix', False, True, False)
  lm_bases.assert_close(lm_bases.our_logits(spliced, params, 't5', 'task'), theirs, base)
  np.testing.assert_array_equal(_our_greedy(spliced, params), _their_greedy(peft_model))


@pytest.mark.parametrize('locations,named', [
    (dict(encoder_prefix=True, cross_prefix=False), 'encoder_prefix'),
    (dict(encoder_prefix=False, cross_prefix=True), 'cross_prefix')])
def test_a_t5_prefix_outside_the_decoder_self_attention_is_refused_naming_it(tmp_path, lm_base_dir,
                                                                           locations, named):
  with pytest.raises(InteropError, match=rf"prefixes at \['{named}'\].*decoder's self-attention only.*"
                                         'encoder_prefix=False, cross_prefix=False'):
    lm_bases.export(tmp_path, lm_base_dir, 't5', 'prefix_tuning_flat', prefix_length=P,
                    positions='after_prefix', **locations)
  assert not (tmp_path / 'peft').exists()


def test_a_t5_prefix_that_keeps_positions_is_refused_naming_the_option(tmp_path, lm_base_dir):
  with pytest.raises(InteropError, match=r"positions='none' cannot be exported to PEFT"):
    lm_bases.export(tmp_path, lm_base_dir, 't5', 'prefix_tuning_flat', prefix_length=P,
                    encoder_prefix=False, cross_prefix=False)
