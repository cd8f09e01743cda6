"""Prefix tuning with positions='after_prefix' <-> PEFT's PREFIX_TUNING (peft on transformers'
PyTorch BERT/RoBERTa, GPT-2, Llama of the same weights): our export gives our logits and greedy
tokens in PEFT, PEFT's own save gives PEFT's logits here; a prefix that keeps the real tokens'
positions (positions='none') is refused by name (T5: test_peft_t5_prefix)."""

import json

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
from tests.interop.test_peft_prompt import randomized_peft_save

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


def _roberta_logits_from_peft_prefix(peft_model):
  """What PEFT's SEQ_CLS prefix forward computes, with RoBERTa's own head: PEFT's forward reads
  `outputs[1]` as a pooler output, which RoBERTa's classifier has not (it fails there), so the
  reference feeds PEFT's `get_prompt` and mask to transformers' RoBERTa and its head itself."""
  ids, mask = (torch.tensor(a, dtype=torch.long) for a in encoders.inputs('roberta'))
  model = peft_model.get_base_model()
  with torch.no_grad():
    past = peft_model.get_prompt(ids.shape[0])
    mask = torch.cat([torch.ones(ids.shape[0], P, dtype=torch.long), mask], dim=1)
    hidden = model.roberta(input_ids=ids, attention_mask=mask, past_key_values=past).last_hidden_state
    return peft_model.base_model.classifier(hidden).numpy()


@pytest.mark.parametrize('family', ['bert', 'roberta'])
def test_encoder_prefix_and_head_load_in_peft_with_our_logits(tmp_path, base_dir, family):
  spliced, params, checkpoint = encoders.save_trained(
      tmp_path / 'run', base_dir(family), family, 'task', 'prefix_tuning', prefix_length=P,
      bottleneck_size=8, positions='after_prefix')
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert (config['peft_type'], config['task_type']) == ('PREFIX_TUNING', 'SEQ_CLS')
  assert config['modules_to_save'] == ['classifier']
  peft_model = peft.PeftModel.from_pretrained(encoders.torch_base(base_dir(family)), str(exported)).eval()
  theirs = (encoders.torch_logits(peft_model, family) if family == 'bert'
            else _roberta_logits_from_peft_prefix(peft_model))
  base = encoders.torch_logits(encoders.torch_base(base_dir(family)), family)
  encoders.assert_close(encoders.our_logits(spliced, params, family, 'task'), theirs, base)


def _peft_prefix_save(tmp_path, model, task_type, projection):
  """PEFT's own PREFIX_TUNING save of a random prefix (and head); `(directory, peft model)`."""
  return randomized_peft_save(tmp_path, model, peft.PrefixTuningConfig(
      task_type=task_type, num_virtual_tokens=P, prefix_projection=projection, encoder_hidden_size=8))


@pytest.mark.parametrize('family,projection', [('gpt2', False), ('llama', True)])
def test_peft_lm_prefix_imports_with_their_logits(tmp_path, lm_base_dir, family, projection):
  model = lm_bases.torch_base(lm_base_dir(family), family)
  base = lm_bases.torch_logits(model, family)
  saved, peft_model = _peft_prefix_save(tmp_path, model, 'CAUSAL_LM', projection)
  theirs = lm_bases.torch_logits(peft_model, family)
  checkpoint = import_checkpoint(saved, 'peft', model=str(lm_base_dir(family)), out=tmp_path / 'ours',
                                 name='task')
  pretrained = lm_bases.load_ours(lm_base_dir(family))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params, *lm_bases.inputs(family))
  method = spliced.adapter('task').method
  assert (method.kind, method.flat, method.positions) == ('prefix_tuning', True, 'after_prefix')
  lm_bases.assert_close(lm_bases.our_logits(spliced, params, family, 'task'), theirs, base)


def test_peft_encoder_prefix_and_head_import_with_their_logits(tmp_path, base_dir):
  base = encoders.torch_logits(encoders.torch_base(base_dir('bert')), 'bert')
  saved, peft_model = _peft_prefix_save(tmp_path, encoders.torch_base(base_dir('bert')), 'SEQ_CLS', False)
  theirs = encoders.torch_logits(peft_model, 'bert')
  checkpoint = import_checkpoint(saved, 'peft', model=str(base_dir('bert')), out=tmp_path / 'ours',
                                 name='task')
  pretrained = encoders.load_ours(base_dir('bert'))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params,
                                    encoders.inputs('bert')[0])
  encoders.assert_close(encoders.our_logits(spliced, params, 'bert', 'task'), theirs, base)


def test_a_prefix_that_keeps_positions_is_refused_naming_the_option(tmp_path, lm_base_dir):
  with pytest.raises(InteropError, match=r"positions='none' cannot be exported to PEFT.*"
                                         r"positions='after_prefix'"):
    lm_bases.export(tmp_path, lm_base_dir, 'gpt2', 'prefix_tuning_flat', prefix_length=P)
  assert not (tmp_path / 'peft').exists()


@pytest.mark.slow
def test_prefix_exports_and_imports_through_the_cli(tmp_path, lm_base_dir):
  from tests.interop.test_cli import run

  directory = lm_base_dir('gpt2')
  spliced, params, _ = lm_bases.save_trained(
      tmp_path / 'run', directory, 'gpt2', 'task',
      lm_bases.get_method('prefix_tuning', prefix_length=P, bottleneck_size=8, positions='after_prefix'))
  exported = run('experiments.export', workdir=tmp_path / 'run', format='peft', out=tmp_path / 'peft')
  assert exported.returncode == 0, exported.stderr
  imported = run('experiments.import_adapter', **{'from': tmp_path / 'peft'}, format='peft',
                 model=directory, out=tmp_path / 'imported', name='task')
  assert imported.returncode == 0, imported.stderr
  pretrained = lm_bases.load_ours(directory)
  back, back_params = restore_adapter(tmp_path / 'imported', pretrained.model, pretrained.params,
                                      *lm_bases.inputs('gpt2'))
  assert back.adapter('task').method.flat  # the MLP folded into flat prefixes
  np.testing.assert_allclose(lm_bases.our_logits(back, back_params, 'gpt2', 'task'),
                             lm_bases.our_logits(spliced, params, 'gpt2', 'task'), atol=1e-4, rtol=0)


def test_adapterhub_export_of_a_shifted_prefix_is_refused_naming_the_option(tmp_path, lm_base_dir):
  _, _, checkpoint = lm_bases.save_trained(
      tmp_path / 'run', lm_base_dir('gpt2'), 'gpt2', 'task',
      lm_bases.get_method('prefix_tuning_flat', prefix_length=P, positions='after_prefix'))
  with pytest.raises(InteropError, match=r"positions='after_prefix' cannot be exported to AdapterHub.*"
                                         r"positions='none'"):
    export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  assert not (tmp_path / 'hub').exists()
