"""`experiments.export` and `experiments.import_adapter` as a user runs them: in subprocesses."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from adapters_jax import get_method, load_record, restore_adapter
from adapters_jax.checkpoint.save import load_leaves
from tests.interop.conftest import inputs, load_ours, our_logits, save_trained

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(module, **flags):
  args = [sys.executable, '-m', module] + [f'--{k}={v}' for k, v in flags.items()]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize('fmt,method,options', [
    ('peft', 'lora', dict(rank=4, alpha=8.0)), ('adapters', 'houlsby', dict(size=8)),
    ('adapters', 'prompt_tuning', dict(length=3, insert_at='embeddings_output'))])
def test_export_then_import_through_the_cli_gives_back_the_adapter(tmp_path, base_dir, fmt, method, options):
  base = base_dir('bert')
  spliced, params, best = save_trained(tmp_path / 'run', base, 'bert', 'task', method, **options)
  exported = run('experiments.export', workdir=tmp_path / 'run', format=fmt, out=tmp_path / 'exported')
  assert exported.returncode == 0, exported.stderr
  notes = [line for line in exported.stderr.splitlines() if line.startswith('note:')]
  assert len(notes) == (method == 'houlsby')  # the trained layer norms it carries, in one line
  imported = run('experiments.import_adapter', **{'from': tmp_path / 'exported'}, format=fmt, model=base,
                 out=tmp_path / 'imported', name='task')
  assert imported.returncode == 0, imported.stderr
  # The same leaves (LoRA / bottleneck weights, layer norms, head) under the same paths and method.
  original, back = load_leaves(best), load_leaves(tmp_path / 'imported')
  assert sorted(back) == sorted(original)
  for path in original:
    np.testing.assert_array_equal(back[path], original[path], err_msg=path)
  assert load_record(tmp_path / 'imported')['extra']['imported_from']['format'] == fmt
  pretrained = load_ours(base)
  spliced_back, params_back = restore_adapter(tmp_path / 'imported', pretrained.model, pretrained.params,
                                              inputs('bert')[0])
  np.testing.assert_allclose(our_logits(spliced_back, params_back, 'bert', 'task'),
                             our_logits(spliced, params, 'bert', 'task'), atol=1e-6)


@pytest.mark.slow
def test_import_onto_another_base_is_refused(tmp_path, base_dir):
  save_trained(tmp_path / 'run', base_dir('bert'), 'bert', 'task', 'lora')
  assert run('experiments.export', workdir=tmp_path / 'run', format='peft',
             out=tmp_path / 'exported').returncode == 0
  # Same shapes, other weights: only the weight files' fingerprint tells them apart.
  refused = run('experiments.import_adapter', **{'from': tmp_path / 'exported'}, format='peft',
                model=base_dir('bert-other'), out=tmp_path / 'imported')
  assert refused.returncode != 0
  assert 'weight files differ' in refused.stderr and '--allow_other_base' in refused.stderr
  assert not (tmp_path / 'imported').exists()


@pytest.mark.slow
def test_export_of_a_run_without_best_names_the_file(tmp_path):
  refused = run('experiments.export', workdir=tmp_path / 'run', format='peft', out=tmp_path / 'exported')
  assert refused.returncode != 0
  assert f'No checkpoint at {tmp_path / "run" / "best"}' in refused.stderr


@pytest.mark.slow
def test_a_gpt2_lora_run_exports_for_peft_and_imports_back_through_the_cli(tmp_path, lm_base_dir):
  # Query and value: one block-structured c_attn LoRA in PEFT, split back into the same leaves.
  from tests.interop.lm_bases import our_logits as lm_logits
  from tests.interop.lm_bases import peft_logits
  from tests.interop.lm_bases import save_trained as save_lm

  base = lm_base_dir('gpt2')
  spliced, params, best = save_lm(tmp_path / 'run', base, 'gpt2', 'task',
                                  get_method('lora', rank=4, alpha=8.0))
  exported = run('experiments.export', workdir=tmp_path / 'run', format='peft', out=tmp_path / 'exported')
  assert exported.returncode == 0, exported.stderr
  np.testing.assert_allclose(peft_logits(base, tmp_path / 'exported', 'gpt2'),
                             lm_logits(spliced, params, 'gpt2', 'task'), atol=1e-4)
  imported = run('experiments.import_adapter', **{'from': tmp_path / 'exported'}, format='peft', model=base,
                 out=tmp_path / 'imported', name='task')
  assert imported.returncode == 0, imported.stderr
  original, back = load_leaves(best), load_leaves(tmp_path / 'imported')
  assert sorted(back) == sorted(original)
  for path in original:
    np.testing.assert_array_equal(back[path], original[path], err_msg=path)


@pytest.mark.slow
def test_a_llama_prompt_tuning_run_goes_to_peft_and_back_through_the_cli(tmp_path, lm_base_dir):
  # PEFT returns the prompt's positions too; ours the real tokens only.
  from tests.interop.lm_bases import our_logits as lm_logits
  from tests.interop.lm_bases import peft_logits
  from tests.interop.lm_bases import save_trained as save_lm

  base = lm_base_dir('llama')
  spliced, params, best = save_lm(tmp_path / 'run', base, 'llama', 'task',
                                  get_method('prompt_tuning', length=3))
  exported = run('experiments.export', workdir=tmp_path / 'run', format='peft', out=tmp_path / 'exported')
  assert exported.returncode == 0, exported.stderr
  np.testing.assert_allclose(peft_logits(base, tmp_path / 'exported', 'llama')[:, 3:],
                             lm_logits(spliced, params, 'llama', 'task'), atol=1e-4)
  imported = run('experiments.import_adapter', **{'from': tmp_path / 'exported'}, format='peft', model=base,
                 out=tmp_path / 'imported', name='task')
  assert imported.returncode == 0, imported.stderr
  original, back = load_leaves(best), load_leaves(tmp_path / 'imported')
  assert sorted(back) == sorted(original) == ['embeddings/input_embeddings/adapters/task/prompt']
  np.testing.assert_array_equal(back[sorted(back)[0]], original[sorted(original)[0]])


@pytest.mark.slow
def test_a_bert_prefix_tuning_run_goes_to_adapterhub_and_back_through_the_cli(tmp_path, base_dir):
  import adapters

  from tests.interop.conftest import assert_close, torch_base, torch_logits

  base = base_dir('bert')
  spliced, params, best = save_trained(tmp_path / 'run', base, 'bert', 'task', 'prefix_tuning',
                                       prefix_length=3, bottleneck_size=8)
  exported = run('experiments.export', workdir=tmp_path / 'run', format='adapters', out=tmp_path / 'exported')
  assert exported.returncode == 0, exported.stderr
  model = torch_base(base)
  plain = torch_logits(model, 'bert')
  adapters.init(model)
  model.load_adapter(str(tmp_path / 'exported'), set_active=True, use_safetensors=True)
  assert_close(our_logits(spliced, params, 'bert', 'task'), torch_logits(model.eval(), 'bert'), plain)
  imported = run('experiments.import_adapter', **{'from': tmp_path / 'exported'}, format='adapters',
                 model=base, out=tmp_path / 'imported')
  assert imported.returncode == 0, imported.stderr
  original, back = load_leaves(best), load_leaves(tmp_path / 'imported')
  assert sorted(back) == sorted(original)
  for path in original:
    np.testing.assert_array_equal(back[path], original[path], err_msg=path)
