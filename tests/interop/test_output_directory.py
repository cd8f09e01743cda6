"""Exports and imports never mix runs: a used `--out` is refused in one line unless `--overwrite`,
which replaces it whole; a failed write leaves nothing behind. Through the CLI, in subprocesses."""

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file

from adapters_jax import get_method, save_adapter
from tests.interop.conftest import save_trained, trained_adapter
from tests.interop.test_cli import run


def one_line_error(result) -> str:
  """The refusal as a user sees it: a non-zero exit and one line on stderr, no traceback."""
  assert result.returncode != 0, result.stdout
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr
  return lines[0]


def save_headless(workdir, base, name='task'):
  """A run whose checkpoint holds the Houlsby adapter and layer norms, but no classifier head."""
  spliced, params, mask = trained_adapter(base, 'bert', name, get_method('houlsby', size=8))
  flat = traverse_util.flatten_dict(mask, sep='/')
  mask = traverse_util.unflatten_dict({p: v and not p.startswith('classifier/') for p, v in flat.items()},
                                      sep='/')
  return save_adapter(workdir / 'best', spliced, jax.device_get(params), name, mask=mask,
                      base_name=str(base))


def file_names(directory):
  return sorted(p.name for p in directory.iterdir())


@pytest.mark.slow
def test_an_export_over_an_earlier_export_is_refused_and_overwrite_replaces_it_whole(tmp_path, base_dir):
  base = base_dir('bert')
  save_trained(tmp_path / 'with_head', base, 'bert', 'task', 'houlsby', size=8)
  save_headless(tmp_path / 'headless', base)
  out = tmp_path / 'exported'
  assert run('experiments.export', workdir=tmp_path / 'with_head', format='adapters', out=out).returncode == 0
  assert 'head_config.json' in file_names(out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}

  refused = one_line_error(run('experiments.export', workdir=tmp_path / 'headless', format='adapters',
                               out=out))
  assert str(out) in refused and 'already holds files' in refused and '--overwrite' in refused
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

  replaced = run('experiments.export', workdir=tmp_path / 'headless', format='adapters', out=out,
                 overwrite='true')
  assert replaced.returncode == 0, replaced.stderr
  fresh = tmp_path / 'fresh'
  assert run('experiments.export', workdir=tmp_path / 'headless', format='adapters',
             out=fresh).returncode == 0
  # Exactly what an export into a new directory writes: the other run's head is gone.
  assert file_names(out) == file_names(fresh) == ['adapter.safetensors', 'adapter_config.json']
  replaced_tensors, fresh_tensors = (load_file(d / 'adapter.safetensors') for d in (out, fresh))
  assert sorted(replaced_tensors) == sorted(fresh_tensors)
  for key, value in fresh_tensors.items():
    np.testing.assert_array_equal(replaced_tensors[key], value, err_msg=key)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.')] == []  # no staging left


@pytest.mark.slow
def test_an_import_into_a_used_directory_is_refused_and_overwrite_replaces_it(tmp_path, base_dir):
  base = base_dir('bert')
  save_trained(tmp_path / 'run', base, 'bert', 'task', 'lora')
  assert run('experiments.export', workdir=tmp_path / 'run', format='peft',
             out=tmp_path / 'exported').returncode == 0
  out = tmp_path / 'imported'
  out.mkdir()
  (out / 'notes.txt').write_text('an earlier run')
  flags = {'from': tmp_path / 'exported', 'format': 'peft', 'model': base, 'out': out}
  refused = one_line_error(run('experiments.import_adapter', **flags))
  assert 'notes.txt' in refused and '--overwrite' in refused
  assert file_names(out) == ['notes.txt']

  replaced = run('experiments.import_adapter', **flags, overwrite='true')
  assert replaced.returncode == 0, replaced.stderr
  assert 'notes.txt' not in file_names(out) and '_CHECKPOINT_METADATA' in file_names(out)


@pytest.mark.slow
def test_an_empty_directory_is_used_and_a_failed_import_leaves_nothing(tmp_path, base_dir):
  save_trained(tmp_path / 'run', base_dir('bert'), 'bert', 'task', 'lora')
  (tmp_path / 'exported').mkdir()  # empty: fine
  assert run('experiments.export', workdir=tmp_path / 'run', format='peft',
             out=tmp_path / 'exported').returncode == 0
  refused = one_line_error(run('experiments.import_adapter', **{'from': tmp_path / 'exported'},
                               format='peft', model=base_dir('bert-other'), out=tmp_path / 'imported'))
  assert 'weight files differ' in refused
  assert sorted(p.name for p in tmp_path.iterdir()) == ['exported', 'run']  # no target, no staging
