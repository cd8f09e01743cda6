"""Bad input is refused before anything is loaded, with a message that names the fix."""

import json

import pytest

from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint


def test_unknown_format_lists_the_valid_ones(tmp_path):
  with pytest.raises(InteropError, match=r"Unknown format 'hub'; valid formats: \['adapters', 'peft'\]"):
    import_checkpoint(tmp_path, 'hub', model='minilm-l6', out=tmp_path / 'out')


def test_broken_config_names_file_and_line(tmp_path):
  (tmp_path / 'adapter_config.json').write_text('{\n  "peft_type": "LORA",\n  "r": 8,,\n}\n')
  with pytest.raises(InteropError, match=r'adapter_config.json line 3: not valid JSON'):
    import_checkpoint(tmp_path, 'peft', model='minilm-l6', out=tmp_path / 'out')


@pytest.mark.parametrize('fmt,pickle,fix', [('peft', 'adapter_model.bin', 'safe_serialization=True'),
                                            ('adapters', 'pytorch_adapter.bin', 'use_safetensors=True')])
def test_pickled_weights_are_refused_with_the_way_to_resave(tmp_path, fmt, pickle, fix):
  (tmp_path / pickle).write_bytes(b'not read')
  with pytest.raises(InteropError, match=fix):
    import_checkpoint(tmp_path, fmt, model='minilm-l6', out=tmp_path / 'out')


@pytest.mark.parametrize('option,value', [('lora_bias', True), ('bias', 'all'),
                                          ('layer_replication', [[0, 1]])])
def test_peft_options_without_equivalent_are_named(tmp_path, option, value):
  config = {'peft_type': 'LORA', 'r': 8, 'lora_alpha': 16, 'target_modules': ['query'], option: value}
  (tmp_path / 'adapter_config.json').write_text(json.dumps(config))
  with pytest.raises(InteropError, match=rf'{option}=.*cannot be represented'):
    import_checkpoint(tmp_path, 'peft', model='minilm-l6', out=tmp_path / 'out')


def test_other_peft_types_are_refused(tmp_path):
  (tmp_path / 'adapter_config.json').write_text(json.dumps({'peft_type': 'LOHA'}))
  with pytest.raises(InteropError, match="LOHA.*importable: LORA, VERA, IA3, PROMPT_TUNING, PREFIX_TUNING"):
    import_checkpoint(tmp_path, 'peft', model='minilm-l6', out=tmp_path / 'out')


def test_export_of_a_missing_checkpoint_names_it(tmp_path):
  with pytest.raises(ValueError, match=f'No checkpoint at {tmp_path / "best"}'):
    export_checkpoint(tmp_path / 'best', 'peft', tmp_path / 'out')
