"""Prefix and prompt tuning to and from AdapterHub's format (`adapters` 1.3.0 on PyTorch): our export
gives our logits there, AdapterHub's save gives its logits here (prefix: BERT/RoBERTa, GPT-2, Llama;
prompt, placed after the embeddings' positions and LayerNorm: BERT/RoBERTa); a prompt placed before
them and T5's prefix are refused."""

import adapters
import pytest
import torch
import transformers
from safetensors.torch import save_file

from adapters_jax import get_method, restore_adapter
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint
from tests.interop import conftest as encoders
from tests.interop import lm_bases

P, BOTTLENECK = 3, 8


def adapterhub_save(model, config, directory):
  """AdapterHub's own save of adapter 'task' (random prefix), made safetensors: AdapterHub 1.3.0
  cannot write a prefix as safetensors itself (its pool is shared with every layer)."""
  adapters.init(model)
  model.add_adapter('task', config=config)
  model.set_active_adapters('task')
  model.save_adapter(str(directory), 'task')
  state = torch.load(directory / 'pytorch_adapter.bin', weights_only=True)
  save_file({k: v.clone().contiguous() for k, v in state.items()}, str(directory / 'adapter.safetensors'))
  (directory / 'pytorch_adapter.bin').unlink()
  return directory


def eager_decoder(directory):
  """transformers' decoder with eager attention: under SDPA without padding (mask None, `is_causal`)
  AdapterHub's prefixed keys get a causal mask aligned at the top left, hiding real tokens."""
  return transformers.AutoModelForCausalLM.from_pretrained(str(directory), attn_implementation='eager').eval()


def eager_encoder(directory):
  """transformers' classifier with eager attention: under SDPA AdapterHub's prompt mask leaves a
  padded row's logits other than the row's alone (checked on 1.3.0); eager gives the row's own."""
  return transformers.AutoModelForSequenceClassification.from_pretrained(
      str(directory), attn_implementation='eager').eval()


def loaded_in_adapterhub(model, exported):
  adapters.init(model)
  model.load_adapter(str(exported), set_active=True, use_safetensors=True)
  return model.eval()


@pytest.mark.parametrize('family,method', [('bert', 'prefix_tuning'), ('roberta', 'prefix_tuning_flat')])
def test_encoder_prefix_and_head_load_in_adapterhub_with_our_logits(tmp_path, base_dir, family, method):
  spliced, params, checkpoint = encoders.save_trained(tmp_path / 'run', base_dir(family), family, 'task',
                                                      method, prefix_length=P, bottleneck_size=BOTTLENECK)
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  base = encoders.torch_logits(encoders.torch_base(base_dir(family)), family)
  theirs = encoders.torch_logits(loaded_in_adapterhub(encoders.torch_base(base_dir(family)), exported),
                                 family)
  encoders.assert_close(encoders.our_logits(spliced, params, family, 'task'), theirs, base)


@pytest.mark.parametrize('family,flat', [('gpt2', False), ('llama', True)])
def test_decoder_prefix_from_adapterhub_gives_its_logits_and_goes_back(tmp_path, lm_base_dir, family, flat):
  # AdapterHub adds the prefix after positions (learned, RoPE) as ours does: no real token moves.
  model = eager_decoder(lm_base_dir(family))
  base = lm_bases.torch_logits(model, family)
  torch.manual_seed(0)
  saved = adapterhub_save(model, adapters.PrefixTuningConfig(prefix_length=P, flat=flat,
                                                             bottleneck_size=BOTTLENECK), tmp_path / 'saved')
  theirs = lm_bases.torch_logits(model.eval(), family)
  checkpoint = import_checkpoint(saved, 'adapters', model=str(lm_base_dir(family)), out=tmp_path / 'ours')
  pretrained = lm_bases.load_ours(lm_base_dir(family))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params,
                                    *lm_bases.inputs(family))
  lm_bases.assert_close(lm_bases.our_logits(spliced, params, family, 'task'), theirs, base)
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'back')
  again = loaded_in_adapterhub(eager_decoder(lm_base_dir(family)), exported)
  lm_bases.assert_close(lm_bases.torch_logits(again, family), theirs, base)


def test_prefix_with_leave_out_keeps_adapterhubs_layer_count(tmp_path, base_dir):
  # AdapterHub stacks only the layers that have a prefix (here layer 1 alone).
  spliced, params, checkpoint = encoders.save_trained(tmp_path / 'run', base_dir('bert'), 'bert', 'task',
                                                      'prefix_tuning_flat', prefix_length=P, leave_out=(0,))
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  base = encoders.torch_logits(encoders.torch_base(base_dir('bert')), 'bert')
  theirs = encoders.torch_logits(loaded_in_adapterhub(encoders.torch_base(base_dir('bert')), exported),
                                 'bert')
  encoders.assert_close(encoders.our_logits(spliced, params, 'bert', 'task'), theirs, base)


@pytest.mark.parametrize('family,combine', [('bert', 'prefix'), ('roberta', 'prefix_after_bos')])
def test_adapterhub_prompt_gives_its_logits_here_and_goes_back(tmp_path, base_dir, family, combine):
  # AdapterHub concatenates the prompt to the embeddings' output: our insert_at='embeddings_output'.
  model = eager_encoder(base_dir(family))
  base = encoders.torch_logits(model, family)
  adapters.init(model)
  model.add_adapter('task', config=adapters.PromptTuningConfig(prompt_length=P, combine=combine))
  model.set_active_adapters('task')
  encoders.randomize_torch(model, lambda name: 'prompt_tuning' in name or 'classifier' in name)
  theirs = encoders.torch_logits(model.eval(), family)
  model.save_adapter(str(tmp_path / 'saved'), 'task', use_safetensors=True)
  checkpoint = import_checkpoint(tmp_path / 'saved', 'adapters', model=str(base_dir(family)),
                                 out=tmp_path / 'ours')
  pretrained = encoders.load_ours(base_dir(family))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params,
                                    encoders.inputs(family)[0])
  assert spliced.adapter('task').method.insert_at == 'embeddings_output'
  encoders.assert_close(encoders.our_logits(spliced, params, family, 'task'), theirs, base)
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'back')
  again = loaded_in_adapterhub(eager_encoder(base_dir(family)), exported)
  encoders.assert_close(encoders.torch_logits(again, family), theirs, base)


@pytest.mark.parametrize('family', ['bert', 'roberta'])
def test_our_prompt_after_the_embeddings_loads_in_adapterhub_with_our_logits(tmp_path, base_dir, family):
  spliced, params, checkpoint = encoders.save_trained(tmp_path / 'run', base_dir(family), family, 'task',
                                                      'prompt_tuning', length=P,
                                                      insert_at='embeddings_output')
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  base = encoders.torch_logits(eager_encoder(base_dir(family)), family)
  theirs = encoders.torch_logits(loaded_in_adapterhub(eager_encoder(base_dir(family)), exported),
                                 family)
  encoders.assert_close(encoders.our_logits(spliced, params, family, 'task'), theirs, base)


def test_each_placement_is_refused_by_the_library_that_has_the_other(tmp_path, base_dir):
  _, _, before = encoders.save_trained(tmp_path / 'before', base_dir('bert'), 'bert', 'task',
                                       'prompt_tuning', length=P)
  with pytest.raises(InteropError, match=r"insert_at='input_embeddings' cannot be exported to "
                                         r"AdapterHub: .*train with insert_at='embeddings_output'"):
    export_checkpoint(before, 'adapters', tmp_path / 'hub')
  _, _, after = encoders.save_trained(tmp_path / 'after', base_dir('bert'), 'bert', 'task',
                                      'prompt_tuning', length=P, insert_at='embeddings_output')
  with pytest.raises(InteropError, match=r"insert_at='embeddings_output'.*has no PEFT form.*"
                                         r"train with insert_at='input_embeddings'"):
    export_checkpoint(after, 'peft', tmp_path / 'peft')


def test_t5_prefix_is_refused_naming_the_relative_positions(tmp_path, lm_base_dir):
  _, _, checkpoint = lm_bases.save_trained(tmp_path / 'run', lm_base_dir('t5'), 't5', 'task',
                                           get_method('prefix_tuning_flat', prefix_length=P))
  with pytest.raises(InteropError,
                     match=r"T5 prefix gets T5's relative-position buckets .* queries stay at i"):
    export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
