"""PEFT exports of decoders checked against the rules vLLM's LoRA loader applies (vLLM itself needs a
GPU build): `vllm/lora/peft_helper.py` (PEFTHelper: required `r`, `lora_alpha`, `target_modules`;
`modules_to_save` must be None; DoRA refused; scaling lora_alpha / r, or / sqrt(r) with rsLoRA, from
the top-level fields only), `vllm/lora/utils.py` (`parse_fine_tuned_lora_name`: strip
`base_model.model.`, keys end in `lora_A.weight` / `lora_B.weight`) and `lora_model.py` (a module
whose last name is not among the model's LoRA modules is refused)."""

import json

import pytest
import torch

from adapters_jax.interop.peft import CONFIG_FILE, WEIGHTS_FILE
from adapters_jax.models.hf_files import read_safetensors_file
from adapters_jax.splicing.sites import FFN_GATE, FFN_INTERMEDIATE, FFN_OUTPUT, KEY, QUERY, VALUE
from tests.interop.lm_bases import export, torch_base

# vLLM's Llama-family LoRA modules: `packed_modules_mapping` (qkv_proj, gate_up_proj) expanded, the
# other linear layers, and the embedding modules.
LLAMA_LORA_MODULES = {'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj',
                      'embed_tokens', 'lm_head'}
PREFIX = 'base_model.model.'


def vllm_problems(directory, model) -> list[str]:
  """What vLLM's loader would refuse (or load wrongly) in a PEFT directory for `model`."""
  config = json.loads((directory / CONFIG_FILE).read_text())
  problems = [f'missing {field}' for field in ('r', 'lora_alpha', 'target_modules') if field not in config]
  if config.get('modules_to_save'):
    problems.append('vLLM only supports modules_to_save being None')
  if config.get('use_dora'):
    problems.append('vLLM does not support DoRA')
  if config.get('rank_pattern') or config.get('alpha_pattern'):
    problems.append('vLLM ignores rank_pattern/alpha_pattern (it scales by the top-level fields)')
  tensors, _ = read_safetensors_file(directory / WEIGHTS_FILE)
  modules = dict(model.named_modules())
  found: dict[str, set[str]] = {}
  for key, value in tensors.items():
    if not key.startswith(PREFIX):
      problems.append(f'{key} does not start with {PREFIX}')
    parts = key.removeprefix(PREFIX).split('.')
    if parts[-1] != 'weight' or parts[-2] not in ('lora_A', 'lora_B'):
      problems.append(f'{key} is unsupported LoRA weight')
      continue
    name, which = '.'.join(parts[:-2]), parts[-2]
    found.setdefault(name, set()).add(which)
    if parts[-3] not in LLAMA_LORA_MODULES:
      problems.append(f'{name} is not among the expected target modules')
      continue
    module = modules.get(name)
    if not isinstance(module, torch.nn.Linear):
      problems.append(f'{name} is no Linear module of the model')
      continue
    expected = ((config['r'], module.in_features) if which == 'lora_A'
                else (module.out_features, config['r']))
    if tuple(value.shape) != expected:
      problems.append(f'{key} has shape {tuple(value.shape)}, expected {expected}')
  problems += [f'{name} lacks lora_A or lora_B' for name, pair in found.items()
               if pair != {'lora_A', 'lora_B'}]
  return problems


ALL = tuple((site, 'parallel') for site in (QUERY, KEY, VALUE, FFN_GATE, FFN_INTERMEDIATE, FFN_OUTPUT))


@pytest.mark.parametrize('family', ['llama', 'qwen2', 'mistral', 'gemma'])
def test_a_lora_export_follows_vllm_loader_rules(tmp_path, lm_base_dir, family):
  _, _, exported = export(tmp_path, lm_base_dir, family, 'lora', sites=ALL, rank=4, alpha=8.0)
  assert vllm_problems(exported, torch_base(lm_base_dir(family), family)) == []
  config = json.loads((exported / CONFIG_FILE).read_text())
  keys = read_safetensors_file(exported / WEIGHTS_FILE)[0]
  assert 'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight' in keys
  assert config['task_type'] == 'CAUSAL_LM' and config['modules_to_save'] is None
  assert config['r'] == 4 and config['lora_alpha'] == 8.0
  assert config['base_model_name_or_path'] == str(lm_base_dir(family).resolve())


@pytest.mark.parametrize('method,found', [('dora', 'vLLM does not support DoRA'),
                                          ('ia3', 'ia3_l is unsupported LoRA weight')])
def test_the_rules_catch_what_vllm_refuses(tmp_path, lm_base_dir, method, found):
  _, _, exported = export(tmp_path, lm_base_dir, 'llama', method)
  problems = vllm_problems(exported, torch_base(lm_base_dir('llama'), 'llama'))
  assert any(found in problem for problem in problems), problems
