"""PEFT VeRA saves (made here by PEFT 0.21.2 with `save_projection=True`, its default) imported with the
projections they hold: PEFT's logits, frozen projections kept by our checkpoints, training and
export back to PEFT; a save without projections is refused naming the fix."""

import jax
import numpy as np
import peft
import pytest
import safetensors.numpy
from flax import traverse_util

from adapters_jax import restore_adapter, save_adapter
from adapters_jax.checkpoint.save import load_leaves, load_record
from adapters_jax.interop import InteropError, export_checkpoint, import_checkpoint
from adapters_jax.methods import method_from_dict
from adapters_jax.splicing import trainable
from adapters_jax.train.experiment import init_adapter_from
from tests.interop import conftest as bert
from tests.interop import lm_bases as lm

# Sites of different widths, so each slices its own part of the shared projections.
BERT_TARGETS = ['query', 'intermediate.dense', 'output.dense']  # 32->32, 32->48, 32->32 and 48->32
LLAMA_TARGETS = ['q_proj', 'k_proj', 'down_proj']  # k_proj narrower (2 key/value heads), down_proj wider
PROJECTIONS = ('adapters/task/shared/projection_a', 'adapters/task/shared/projection_b')


def save_bert_vera(tmp_path, base_dir, **options):
  """`(saved directory, PEFT's logits, base logits)` of a random PEFT VeRA + head on tiny BERT."""
  model = bert.torch_base(base_dir('bert'))
  base = bert.torch_logits(model, 'bert')
  peft_model = peft.get_peft_model(model, peft.VeraConfig(r=4, target_modules=BERT_TARGETS,
                                                          modules_to_save=['classifier'], **options))
  bert.randomize_torch(peft_model, lambda n: 'vera_lambda' in n or 'modules_to_save' in n)
  theirs = bert.torch_logits(peft_model.eval(), 'bert')
  peft_model.save_pretrained(str(tmp_path / 'peft'))
  return tmp_path / 'peft', theirs, base


def save_llama_vera(tmp_path, lm_base_dir):
  model = lm.torch_base(lm_base_dir('llama'), 'llama')
  base = lm.torch_logits(model, 'llama')
  peft_model = peft.get_peft_model(model, peft.VeraConfig(r=6, target_modules=LLAMA_TARGETS,
                                                          projection_prng_key=3, task_type='CAUSAL_LM'))
  lm.randomize_torch(peft_model, lambda n: 'vera_lambda' in n)
  theirs = lm.torch_logits(peft_model.eval(), 'llama')
  peft_model.save_pretrained(str(tmp_path / 'peft'))
  return tmp_path / 'peft', theirs, base


def peft_projections(saved):
  tensors = safetensors.numpy.load_file(str(saved / 'adapter_model.safetensors'))
  return tensors['base_model.vera_A'], tensors['base_model.vera_B']  # [r, N], [M, r]


def assert_projections_are_the_files(checkpoint, saved):
  leaves = load_leaves(checkpoint)
  vera_a, vera_b = peft_projections(saved)
  np.testing.assert_array_equal(leaves[PROJECTIONS[0]], vera_a.T)
  np.testing.assert_array_equal(leaves[PROJECTIONS[1]], vera_b.T)


def test_bert_vera_imports_with_its_projections_and_gives_peft_logits(tmp_path, base_dir):
  saved, theirs, base = save_bert_vera(tmp_path, base_dir)
  checkpoint = import_checkpoint(saved, 'peft', model=str(base_dir('bert')), out=tmp_path / 'ours',
                                 name='task')
  record = load_record(checkpoint)
  assert record['method']['stored_projections'] and record['method']['rank'] == 4
  assert not set(PROJECTIONS) & set(record['trained_paths'])  # held, not trained
  assert_projections_are_the_files(checkpoint, saved)
  pretrained = bert.load_ours(base_dir('bert'))
  ids = bert.inputs('bert')[0]
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params, ids)
  ours = bert.our_logits(spliced, params, 'bert', 'task')
  bert.assert_close(ours, theirs, base)

  # A run's mask freezes the projections: not in the trained partition, so no gradient or optimizer
  # state; the run's checkpoint still holds them and restores the same model.
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('task')]))
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  assert [flat_mask[p] for p in PROJECTIONS] == [False, False]
  assert any(v for p, v in flat_mask.items() if p.endswith('/lambda_d'))
  trained, _ = trainable.split(params, mask)
  assert not set(PROJECTIONS) & set(traverse_util.flatten_dict(trained, sep='/'))
  again = save_adapter(tmp_path / 'again', spliced, params, 'task', mask=mask,
                       base_name=str(base_dir('bert')))
  assert_projections_are_the_files(again, saved)
  spliced_again, params_again = restore_adapter(again, pretrained.model, pretrained.params, ids)
  np.testing.assert_array_equal(bert.our_logits(spliced_again, params_again, 'bert', 'task'), ours)

  # Exported back, PEFT loads the same projections and gives its own logits.
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'exported')
  for original, back in zip(peft_projections(saved), peft_projections(exported), strict=True):
    np.testing.assert_array_equal(back, original)
  model = bert.torch_base(base_dir('bert'))
  reloaded = bert.torch_logits(peft.PeftModel.from_pretrained(model, str(exported)).eval(), 'bert')
  np.testing.assert_allclose(reloaded, theirs, atol=bert.TOLERANCE, rtol=0)


def test_llama_vera_imports_gives_peft_logits_and_exports_back(tmp_path, lm_base_dir):
  saved, theirs, base = save_llama_vera(tmp_path, lm_base_dir)
  checkpoint = import_checkpoint(saved, 'peft', model=str(lm_base_dir('llama')), out=tmp_path / 'ours',
                                 name='task')
  assert_projections_are_the_files(checkpoint, saved)
  assert load_record(checkpoint)['method']['projection_seed'] == 3
  pretrained = lm.load_ours(lm_base_dir('llama'))
  spliced, params = restore_adapter(checkpoint, pretrained.model, pretrained.params, *lm.inputs('llama'))
  lm.assert_close(lm.our_logits(spliced, params, 'llama', 'task'), theirs, base)
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'exported')
  np.testing.assert_allclose(lm.peft_logits(lm_base_dir('llama'), exported, 'llama'), theirs,
                             atol=lm.TOLERANCE, rtol=0)


def test_a_run_initialised_from_the_import_keeps_the_projections_frozen(tmp_path, base_dir):
  saved, _, _ = save_bert_vera(tmp_path, base_dir)
  checkpoint = import_checkpoint(saved, 'peft', model=str(base_dir('bert')), out=tmp_path / 'ours',
                                 name='imported')
  # A run with the import's method config (`--config.init_adapter_from=...`): a fresh splice draws
  # its projections from the seed, the init replaces them with the file's.
  from adapters_jax import add_adapter

  pretrained = bert.load_ours(base_dir('bert'))
  method = method_from_dict(load_record(checkpoint)['method'])
  ids = bert.inputs('bert')[0]
  spliced, fresh = add_adapter(pretrained.model, pretrained.params, 'task', method, jax.random.key(1), ids)
  params = init_adapter_from(str(checkpoint), spliced, fresh, 'task')
  flat = traverse_util.flatten_dict(params, sep='/')
  vera_a, _ = peft_projections(saved)
  np.testing.assert_array_equal(np.asarray(flat[PROJECTIONS[0]]), vera_a.T)
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('task')]))
  trained, frozen = trainable.split(params, mask)

  def loss(trained):
    logits = spliced.apply(trainable.combine(trained, frozen), ids, active='task')
    return (logits ** 2).sum()

  grads = traverse_util.flatten_dict(jax.grad(loss)(trained), sep='/')
  assert not set(PROJECTIONS) & set(grads)
  assert all(np.abs(np.asarray(g)).max() > 0 for p, g in grads.items() if p.endswith('/lambda_b'))


def test_a_save_without_projections_is_refused_naming_the_fix(tmp_path, base_dir):
  saved, _, _ = save_bert_vera(tmp_path, base_dir, save_projection=False)
  with pytest.raises(InteropError, match=r"save_projection=false.*torch's generator.*save_projection=True"):
    import_checkpoint(saved, 'peft', model=str(base_dir('bert')), out=tmp_path / 'ours')
  assert not (tmp_path / 'ours').exists()


@pytest.mark.slow
def test_the_import_cli_takes_a_peft_vera_save(tmp_path, base_dir):
  from tests.interop.test_cli import run

  saved, theirs, base = save_bert_vera(tmp_path, base_dir)
  imported = run('experiments.import_adapter', **{'from': saved}, format='peft', model=base_dir('bert'),
                 out=tmp_path / 'imported', name='task')
  assert imported.returncode == 0, imported.stderr
  assert_projections_are_the_files(tmp_path / 'imported', saved)
  pretrained = bert.load_ours(base_dir('bert'))
  spliced, params = restore_adapter(tmp_path / 'imported', pretrained.model, pretrained.params,
                                    bert.inputs('bert')[0])
  bert.assert_close(bert.our_logits(spliced, params, 'bert', 'task'), theirs, base)
