"""PEFT adapters made by PEFT itself on transformers' decoders and T5, imported here: PEFT's logits."""

import peft
import pytest
import torch

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, import_checkpoint
from tests.interop.lm_bases import (
  assert_close,
  inputs,
  load_ours,
  our_logits,
  randomize_torch,
  torch_base,
  torch_logits,
)


def block_structure_c_attn(model, part_of_column):
  """Zeroes every entry of each `c_attn` LoRA B outside its column's third (query, key, value)."""
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'c_attn.lora_B' in name:
        width = param.shape[0] // 3
        for column in range(param.shape[1]):
          keep = part_of_column(column)
          for part in range(3):
            if part != keep:
              param[part * width:(part + 1) * width, column] = 0.0


def save_in_peft(tmp_path, lm_base_dir, family, config, adjust=lambda model: None):
  """`(saved directory, PEFT's logits, base logits)` of a random PEFT adapter made with `config`."""
  model = torch_base(lm_base_dir(family), family)
  base = torch_logits(model, family)
  peft_model = peft.get_peft_model(model, config)
  randomize_torch(peft_model, lambda n: 'lora_' in n or 'ia3_l' in n,
                  around_one=lambda n: 'ia3_l' in n or 'magnitude' in n)
  adjust(peft_model)
  theirs = torch_logits(peft_model.eval(), family)
  peft_model.save_pretrained(str(tmp_path / 'peft'))
  return tmp_path / 'peft', theirs, base


def import_and_run(tmp_path, lm_base_dir, family, saved):
  checkpoint = import_checkpoint(saved, 'peft', model=str(lm_base_dir(family)), out=tmp_path / 'ours',
                                 name='task')
  pretrained = load_ours(lm_base_dir(family))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params, *inputs(family))
  return our_logits(spliced, params, family, 'task')


IMPORTS = [
    ('llama-lora', 'llama', lambda: peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj', 'down_proj'], task_type='CAUSAL_LM')),
    ('mistral-rslora-alpha-pattern', 'mistral', lambda: peft.LoraConfig(
        r=2, lora_alpha=3, use_rslora=True, target_modules=['k_proj', 'gate_proj'],
        alpha_pattern={'gate_proj': 7})),
    ('gemma-dora', 'gemma', lambda: peft.LoraConfig(r=2, lora_alpha=4, use_dora=True,
                                                    target_modules=['q_proj', 'o_proj', 'up_proj'])),
    ('qwen2-dora', 'qwen2', lambda: peft.LoraConfig(r=2, lora_alpha=4, use_dora=True,
                                                    target_modules=['k_proj', 'down_proj'])),
    ('t5-lora', 't5', lambda: peft.LoraConfig(r=2, lora_alpha=4, target_modules=['q', 'v', 'wi_1', 'wo'],
                                              task_type='SEQ_2_SEQ_LM')),
    ('gpt2-ia3', 'gpt2', lambda: peft.IA3Config(target_modules=['c_attn', 'mlp.c_proj'],
                                                feedforward_modules=['mlp.c_proj'], fan_in_fan_out=True)),
]


@pytest.mark.parametrize('case,family,config', IMPORTS, ids=[c[0] for c in IMPORTS])
def test_import_from_peft_gives_their_logits(tmp_path, lm_base_dir, case, family, config):
  saved, theirs, base = save_in_peft(tmp_path, lm_base_dir, family, config())
  assert_close(import_and_run(tmp_path, lm_base_dir, family, saved), theirs, base)


def gpt2_lora(**options):
  return peft.LoraConfig(r=2, lora_alpha=4, target_modules=['c_attn', 'c_fc'], fan_in_fan_out=True,
                         rank_pattern={'c_attn': 6}, alpha_pattern={'c_attn': 12}, **options)


@pytest.mark.parametrize('dora', [False, True], ids=['lora', 'dora'])
def test_a_block_structured_gpt2_c_attn_lora_maps_onto_query_key_value(tmp_path, lm_base_dir, dora):
  # Columns interleaved (0 -> query, 1 -> key, 2 -> value, 3 -> query, ...): any order maps back.
  saved, theirs, base = save_in_peft(tmp_path, lm_base_dir, 'gpt2', gpt2_lora(use_dora=dora),
                                     adjust=lambda m: block_structure_c_attn(m, lambda c: c % 3))
  assert_close(import_and_run(tmp_path, lm_base_dir, 'gpt2', saved), theirs, base)


def test_a_dense_gpt2_c_attn_lora_is_refused_naming_why(tmp_path, lm_base_dir):
  saved, _, _ = save_in_peft(tmp_path, lm_base_dir, 'gpt2', gpt2_lora())
  with pytest.raises(InteropError, match=r'c_attn LoRA B column 0 mixes .*block-structured B'):
    import_checkpoint(saved, 'peft', model=str(lm_base_dir('gpt2')), out=tmp_path / 'ours')
  assert not (tmp_path / 'ours').exists()


def test_vera_on_gpt2_c_attn_is_refused_naming_why(tmp_path, lm_base_dir):
  saved, _, _ = save_in_peft(tmp_path, lm_base_dir, 'gpt2', peft.VeraConfig(
      r=4, target_modules=['c_attn'], fan_in_fan_out=True))
  with pytest.raises(InteropError, match=r"VeRA on GPT-2's fused .*c_attn has one lambda_d"):
    import_checkpoint(saved, 'peft', model=str(lm_base_dir('gpt2')), out=tmp_path / 'ours')


def test_modules_of_different_ranks_are_refused(tmp_path, lm_base_dir):
  saved, _, _ = save_in_peft(tmp_path, lm_base_dir, 'llama', peft.LoraConfig(
      r=2, target_modules=['q_proj', 'v_proj'], rank_pattern={'v_proj': 4}))
  with pytest.raises(InteropError, match=r'different ranks \[2, 4\]'):
    import_checkpoint(saved, 'peft', model=str(lm_base_dir('llama')), out=tmp_path / 'ours')
