"""Adapters saved by AdapterHub's `adapters` 1.3.0 import as our checkpoints with their logits."""

import adapters
import pytest

from adapters_jax import restore_adapter
from adapters_jax.interop import InteropError, import_checkpoint
from tests.interop.conftest import (
  assert_close,
  inputs,
  load_ours,
  our_logits,
  randomize_torch,
  torch_base,
  torch_logits,
)

CASES = [
    ('houlsby', lambda: adapters.DoubleSeqBnConfig(reduction_factor=4), 'bert'),
    ('parallel', lambda: adapters.ParBnConfig(reduction_factor=4), 'roberta'),
    ('bottleneck_gelu', lambda: adapters.BnConfig(mh_adapter=False, output_adapter=True, reduction_factor=8,
                                                  non_linearity='gelu', scaling=2.0, leave_out=[0]), 'bert'),
    ('compacter', lambda: adapters.CompacterConfig(reduction_factor=4), 'bert'),
    ('lora', lambda: adapters.LoRAConfig(r=4, alpha=8, attn_matrices=['q', 'k'], output_lora=True), 'bert'),
    ('ia3', lambda: adapters.IA3Config(), 'roberta'),
]


def save_in_adapters(tmp_path, base_dir, family, config):
  """A torch model with a random adapter `task` (and random head), saved by `save_adapter`."""
  model = torch_base(base_dir(family))
  base = torch_logits(model, family)
  adapters.init(model)
  model.add_adapter('task', config=config)
  scale = getattr(config, 'composition_mode', 'add') == 'scale'
  randomize_torch(model, lambda n: '.task.' in n or n.startswith('classifier'),
                  around_one=lambda n: scale and n.endswith('lora_B'))
  model.set_active_adapters('task')
  theirs = torch_logits(model, family)
  model.save_adapter(str(tmp_path / 'hub'), 'task', use_safetensors=True)
  return tmp_path / 'hub', theirs, base


def restore(checkpoint, base_dir, family):
  pretrained = load_ours(base_dir(family))
  ids, _ = inputs(family)
  return restore_adapter(checkpoint, pretrained.model, pretrained.params, ids)


@pytest.mark.parametrize('case,config,family', CASES, ids=[c[0] for c in CASES])
def test_import_from_adapters_gives_their_logits(tmp_path, base_dir, case, config, family):
  saved, theirs, base = save_in_adapters(tmp_path, base_dir, family, config())
  # Imported under another name: every leaf, shared ones included, moves to it.
  checkpoint = import_checkpoint(saved, 'adapters', model=str(base_dir(family)), out=tmp_path / 'ours',
                                 name='imported')
  spliced, params = restore(checkpoint, base_dir, family)
  assert_close(our_logits(spliced, params, family, 'imported'), theirs, base)


def test_import_refuses_pfeiffer_placement(tmp_path, base_dir):
  # seq_bn reads LayerNorm(h + residual) and normalises twice: no site of ours does that.
  saved, _, _ = save_in_adapters(tmp_path, base_dir, 'bert', adapters.SeqBnConfig(reduction_factor=4))
  with pytest.raises(InteropError, match='original_ln_before=True'):
    import_checkpoint(saved, 'adapters', model=str(base_dir('bert')), out=tmp_path / 'ours')
