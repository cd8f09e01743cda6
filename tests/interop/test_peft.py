"""LoRA, DoRA and (IA)3 between us and PEFT 0.21.2 (on transformers' PyTorch BERT/RoBERTa), both ways."""

import dataclasses
import json

import peft
import pytest

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint, read_checkpoint
from adapters_jax.interop.peft import export_adapter as export_checkpoint_files
from adapters_jax.splicing.sites import ATTENTION_OUTPUT, FFN_OUTPUT, LAYER_NORM_PARAMS, QUERY
from tests.interop.conftest import (
  assert_close,
  inputs,
  load_ours,
  our_logits,
  randomize_torch,
  save_trained,
  torch_base,
  torch_logits,
)

EXPORTS = [
    ('lora', dict(rank=4, alpha=8.0), 'bert'),  # query + value, head trained
    ('lora', dict(sites=((QUERY, 'parallel'), (ATTENTION_OUTPUT, 'parallel'), (FFN_OUTPUT, 'parallel')),
                  rank=2, alpha=5.0, train_also=(LAYER_NORM_PARAMS,)), 'roberta'),  # + layer norms
    ('lora', dict(rank=4, alpha=3.0, use_rslora=True), 'bert'),  # scaling alpha / sqrt(r)
    ('ia3', {}, 'bert'),  # keys, values (outputs) and the second FFN projection's input
]


@pytest.mark.parametrize('method,options,family', EXPORTS,
                         ids=['lora', 'lora_layer_norms', 'rslora', 'ia3'])
def test_export_loads_in_peft_with_our_logits(tmp_path, base_dir, method, options, family):
  spliced, params, checkpoint = save_trained(tmp_path, base_dir(family), family, 'task', method, **options)
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  model = torch_base(base_dir(family))
  base = torch_logits(model, family)
  theirs = torch_logits(peft.PeftModel.from_pretrained(model, str(exported)).eval(), family)
  assert_close(our_logits(spliced, params, family, 'task'), theirs, base)


IMPORTS = [
    ('lora', lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=['query', 'value', 'output.dense'],
                                     modules_to_save=['classifier']), 'bert'),
    ('rslora', lambda: peft.LoraConfig(r=4, lora_alpha=3, use_rslora=True, target_modules=['key'],
                                       modules_to_save=['classifier']), 'roberta'),
    ('dora', lambda: peft.LoraConfig(r=2, lora_alpha=4, use_dora=True, target_modules=['query', 'value'],
                                     modules_to_save=['classifier']), 'roberta'),
    ('ia3', lambda: peft.IA3Config(target_modules=['key', 'value', 'layer.1.output.dense'],
                                   feedforward_modules=['layer.1.output.dense'],
                                   modules_to_save=['classifier']), 'bert'),
]


def save_in_peft(tmp_path, base_dir, family, config):
  model = torch_base(base_dir(family))
  base = torch_logits(model, family)
  peft_model = peft.get_peft_model(model, config)
  randomize_torch(peft_model, lambda n: 'lora_' in n or 'ia3_l' in n or 'modules_to_save' in n,
                  around_one=lambda n: 'ia3_l' in n or 'magnitude' in n)
  theirs = torch_logits(peft_model.eval(), family)
  peft_model.save_pretrained(str(tmp_path / 'peft'))
  return tmp_path / 'peft', theirs, base


@pytest.mark.parametrize('case,config,family', IMPORTS, ids=[c[0] for c in IMPORTS])
def test_import_from_peft_gives_their_logits(tmp_path, base_dir, case, config, family):
  saved, theirs, base = save_in_peft(tmp_path, base_dir, family, config())
  checkpoint = import_checkpoint(saved, 'peft', model=str(base_dir(family)), out=tmp_path / 'ours',
                                 name='task')
  pretrained = load_ours(base_dir(family))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params, inputs(family)[0])
  assert_close(our_logits(spliced, params, family, 'task'), theirs, base)


def test_import_refuses_lora_biases(tmp_path, base_dir):
  saved, _, _ = save_in_peft(tmp_path, base_dir, 'bert',
                             peft.LoraConfig(r=2, target_modules=['query'], lora_bias=True))
  with pytest.raises(InteropError, match='lora_bias=True'):
    import_checkpoint(saved, 'peft', model=str(base_dir('bert')), out=tmp_path / 'ours')


def test_export_refuses_bottleneck_adapters(tmp_path, base_dir):
  _, _, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'houlsby', size=4)
  with pytest.raises(InteropError, match='--format=adapters'):
    export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')


def test_export_opens_with_peft_auto_class_from_its_config_alone(tmp_path, base_dir):
  # Before: task_type None, so no AutoPeftModelFor... class could open the directory.
  base = base_dir('bert')
  spliced, params, checkpoint = save_trained(tmp_path, base, 'bert', 'task', 'lora', rank=4, alpha=8.0)
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['task_type'] == 'SEQ_CLS'
  assert config['base_model_name_or_path'] == str(base.resolve())
  model = peft.AutoPeftModelForSequenceClassification.from_pretrained(str(exported)).eval()
  assert_close(our_logits(spliced, params, 'bert', 'task'), torch_logits(model, 'bert'),
               torch_logits(torch_base(base), 'bert'))


def test_a_packaged_base_is_named_by_its_hub_id_and_a_headless_adapter_extracts_features(
    tmp_path, base_dir):
  _, _, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'lora', rank=4)
  adapter = read_checkpoint(checkpoint)
  headless = dataclasses.replace(adapter, base={'name': 'minilm-l6'}, leaves=adapter.adapter_leaves())
  (tmp_path / 'peft').mkdir()
  exported = export_checkpoint_files(headless, tmp_path / 'peft', 'bert')
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['base_model_name_or_path'] == 'sentence-transformers/all-MiniLM-L6-v2'
  assert config['task_type'] == 'FEATURE_EXTRACTION' and config['modules_to_save'] is None
