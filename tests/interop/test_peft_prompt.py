"""Prompt tuning <-> PEFT's PROMPT_TUNING (peft 0.21.2 on transformers' PyTorch models of the same
weights): our export gives our logits in PEFT, PEFT's save gives PEFT's logits here; PEFT's prefix
moves the real tokens' positions, which a prefix with positions='none' does not (PREFIX_TUNING
itself: test_peft_prefix)."""

import json

import jax
import numpy as np
import peft
import pytest
import torch
from safetensors.numpy import load_file

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint
from tests.interop import conftest as encoders
from tests.interop import lm_bases

P = 3


def peft_model_logits(model, family):
  """PEFT's logits on `lm_bases.inputs` / `conftest.inputs`; a decoder's prompt rows dropped (ours
  return the real tokens only)."""
  if family in ('bert', 'roberta'):
    return encoders.torch_logits(model.eval(), family)
  logits = lm_bases.torch_logits(model.eval(), family)
  return logits if family == 't5' else logits[:, P:]


@pytest.mark.parametrize('family', ['bert', 'roberta'])
def test_encoder_prompt_and_head_load_in_peft_with_our_logits(tmp_path, base_dir, family):
  spliced, params, checkpoint = encoders.save_trained(tmp_path / 'run', base_dir(family), family, 'task',
                                                      'prompt_tuning', length=P)
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert (config['peft_type'], config['task_type'], config['num_virtual_tokens']) == (
      'PROMPT_TUNING', 'SEQ_CLS', P)
  assert config['modules_to_save'] == ['classifier'] and config['num_transformer_submodules'] == 1
  theirs = peft_model_logits(peft.PeftModel.from_pretrained(encoders.torch_base(base_dir(family)),
                                                            str(exported)), family)
  base = encoders.torch_logits(encoders.torch_base(base_dir(family)), family)
  encoders.assert_close(encoders.our_logits(spliced, params, family, 'task'), theirs, base)


@pytest.mark.parametrize('family', ['gpt2', 'llama', 't5'])
def test_lm_prompt_loads_in_peft_with_our_logits(tmp_path, lm_base_dir, family):
  ours, _, exported = lm_bases.export(tmp_path, lm_base_dir, family, 'prompt_tuning', length=P)
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['num_transformer_submodules'] == (2 if family == 't5' else 1)
  rows = load_file(str(exported / 'adapter_model.safetensors'))['prompt_embeddings'].shape[0]
  model = lm_bases.torch_base(lm_base_dir(family), family)
  assert rows == P * config['num_transformer_submodules']
  assert config['num_layers'] == model.config.num_hidden_layers  # as PEFT reads it
  base = lm_bases.torch_logits(model, family)
  theirs = peft_model_logits(peft.PeftModel.from_pretrained(model, str(exported)), family)
  lm_bases.assert_close(ours, theirs, base)


def randomized_peft_save(tmp_path, model, config):
  """PEFT's own save of a prompt-learning adapter (`config`) whose prompt encoder and head are
  random; `(directory, PEFT model in eval mode)`."""
  peft_model = peft.get_peft_model(model, config)
  generator = torch.Generator().manual_seed(3)
  with torch.no_grad():
    for name, param in peft_model.named_parameters():
      if 'prompt_encoder' in name or 'modules_to_save' in name:
        param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
  peft_model.save_pretrained(str(tmp_path / 'saved'))
  return tmp_path / 'saved', peft_model.eval()


def peft_save(tmp_path, model, family, task_type):
  """PEFT's own PROMPT_TUNING save of a random prompt (every row, T5's decoder rows too)."""
  saved, peft_model = randomized_peft_save(
      tmp_path, model, peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=P))
  return saved, peft_model_logits(peft_model, family)


def test_peft_encoder_prompt_imports_with_their_logits(tmp_path, base_dir):
  base = encoders.torch_logits(encoders.torch_base(base_dir('roberta')), 'roberta')
  saved, theirs = peft_save(tmp_path, encoders.torch_base(base_dir('roberta')), 'roberta', 'SEQ_CLS')
  checkpoint = import_checkpoint(saved, 'peft', model=str(base_dir('roberta')), out=tmp_path / 'ours',
                                 name='task')
  pretrained = encoders.load_ours(base_dir('roberta'))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params,
                                    encoders.inputs('roberta')[0])
  encoders.assert_close(encoders.our_logits(spliced, params, 'roberta', 'task'), theirs, base)


@pytest.mark.parametrize('family,task_type', [('llama', 'CAUSAL_LM'), ('t5', 'SEQ_2_SEQ_LM')])
def test_peft_lm_prompt_imports_with_their_logits(tmp_path, lm_base_dir, family, task_type):
  # T5: PEFT stores 2P rows; the decoder's P are random too, and its forward never reads them.
  model = lm_bases.torch_base(lm_base_dir(family), family)
  base = lm_bases.torch_logits(model, family)
  saved, theirs = peft_save(tmp_path, model, family, task_type)
  checkpoint = import_checkpoint(saved, 'peft', model=str(lm_base_dir(family)), out=tmp_path / 'ours',
                                 name='task')
  pretrained = lm_bases.load_ours(lm_base_dir(family))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params,
                                    *lm_bases.inputs(family))
  ours = lm_bases.our_logits(spliced, params, family, 'task')
  lm_bases.assert_close(ours, theirs, base)


def test_prompt_after_bos_is_refused_naming_the_combine(tmp_path, lm_base_dir):
  with pytest.raises(InteropError, match=r"combine='prefix_after_bos' has no PEFT form"):
    lm_bases.export(tmp_path, lm_base_dir, 'gpt2', 'prompt_tuning', length=P, combine='prefix_after_bos')
  assert not (tmp_path / 'peft').exists()


@pytest.mark.parametrize('projection', [False, True], ids=['flat', 'prefix_projection'])
def test_peft_prefix_differs_from_ours_only_by_the_real_tokens_positions(tmp_path, lm_base_dir, projection):
  """Why a prefix with positions='none' is refused: PEFT saves either form as flat `prompt_embeddings`
  [P, L * 2 * d] (the MLP applied), which lands exactly on our flat prefix; PEFT then adds P to every
  real token's position (`_adjust_prompt_learning_kwargs`). Given back their positions, PEFT's logits
  are those of our prefix that keeps the positions."""
  import transformers

  from adapters_jax import add_adapter, get_method
  from adapters_jax.interop import prefix_layout

  directory = lm_base_dir('gpt2')
  model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation='eager')
  peft_model = peft.get_peft_model(model.eval(), peft.PrefixTuningConfig(
      task_type='CAUSAL_LM', num_virtual_tokens=P, prefix_projection=projection, encoder_hidden_size=16))
  peft_model.eval()
  ids, mask = (torch.tensor(a, dtype=torch.long) for a in lm_bases.inputs('gpt2'))
  with torch.no_grad():
    saved = peft_model.get_prompt_embedding_to_save('default').numpy()  # [P, L * 2 * 64]
    moved = peft_model(input_ids=ids, attention_mask=mask).logits.numpy()
    unmoved = peft_model(input_ids=ids, attention_mask=mask,
                         position_ids=torch.arange(ids.shape[1])[None] - P).logits.numpy()  # PEFT adds P
  pretrained = lm_bases.load_ours(directory)
  spliced, params = add_adapter(pretrained.model, pretrained.params, 'task',
                                get_method('prefix_tuning_flat', prefix_length=P), jax.random.key(0),
                                *lm_bases.inputs('gpt2'))
  params = prefix_layout.from_stacked(spliced.adapter('task'), params, {'self_prefix': {'prefixes': saved}})
  ours = lm_bases.our_logits(spliced, params, 'gpt2', 'task')
  np.testing.assert_allclose(ours, unmoved, atol=1e-4, rtol=0)
  assert np.abs(ours - moved).max() > 1e-2
