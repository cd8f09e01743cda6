"""A PiSSA/OLoRA adapter exported to PEFT (and AdapterHub) as the plain rank-2r LoRA of the
ORIGINAL base (PEFT's `path_initial_model_for_weight_conversion`): PEFT loads it on transformers'
untouched model and gives our logits (ours run beside the residual kernels); PEFT's own PiSSA/OLoRA
files import as ours, the residual rebuilt."""

import json

import numpy as np
import peft
import pytest

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint, read_checkpoint
from adapters_jax.interop.principal_lora import as_plain_lora
from tests.interop.conftest import (
  assert_close,
  inputs,
  load_ours,
  our_logits,
  save_trained,
  torch_base,
  torch_logits,
)
from tests.interop.test_adapterhub_export import load_in_adapters
from tests.interop.test_peft import save_in_peft


@pytest.mark.parametrize('init,family,rslora', [('pissa', 'bert', False), ('olora', 'roberta', True),
                                                ('pissa_niter_2', 'bert', False)])
def test_export_is_a_plain_lora_of_the_original_base(tmp_path, base_dir, init, family, rslora):
  spliced, params, checkpoint = save_trained(tmp_path, base_dir(family), family, 'task', 'lora',
                                             rank=2, alpha=5.0, use_rslora=rslora, init_weights=init)
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert (config['r'], config['init_lora_weights']) == (4, True)
  assert config['lora_alpha'] == pytest.approx(5.0 * (np.sqrt(2) if rslora else 2))
  model = torch_base(base_dir(family))  # the original weights, not the residuals
  base = torch_logits(model, family)
  theirs = torch_logits(peft.PeftModel.from_pretrained(model, str(exported)).eval(), family)
  assert_close(our_logits(spliced, params, family, 'task'), theirs, base)


def test_adapterhub_export_is_the_plain_lora_too(tmp_path, base_dir):
  spliced, params, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'lora',
                                             rank=2, alpha=5.0, init_weights='olora')
  exported = export_checkpoint(checkpoint, 'adapters', tmp_path / 'hub')
  theirs, base = load_in_adapters(base_dir, 'bert', exported)
  assert_close(our_logits(spliced, params, 'bert', 'task'), theirs, base)


@pytest.mark.parametrize('init', ['pissa', 'olora'])
def test_peft_pissa_adapter_imports_and_rebuilds_the_residual(tmp_path, base_dir, init):
  """PEFT saves a PiSSA/OLoRA adapter (unconverted) for its residual base; imported, our restore
  rebuilds the same residual from the original base and gives PEFT's logits."""
  saved, theirs, base = save_in_peft(tmp_path, base_dir, 'bert', peft.LoraConfig(
      r=2, lora_alpha=4, init_lora_weights=init, target_modules=['query', 'value'],
      modules_to_save=['classifier']))
  checkpoint = import_checkpoint(saved, 'peft', model=str(base_dir('bert')), out=tmp_path / 'ours',
                                 name='task')
  assert read_checkpoint(checkpoint).method.init_weights == init
  pretrained = load_ours(base_dir('bert'))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params, inputs('bert')[0])
  assert_close(our_logits(spliced, params, 'bert', 'task'), theirs, base)


def test_plain_lora_refuses_another_base(tmp_path, base_dir):
  _, _, checkpoint = save_trained(tmp_path, base_dir('bert'), 'bert', 'task', 'lora', rank=2,
                                  init_weights='pissa')
  adapter = read_checkpoint(checkpoint)
  other = dict(adapter.base, name=str(base_dir('bert-other')))
  with pytest.raises(InteropError, match='weight files differ'):
    as_plain_lora(type(adapter)(**{**adapter.__dict__, 'base': other}))
