"""A base model that cannot be found fails `experiments.import_adapter` in one line, in bounded time:
a missing relative directory is named as such, and a hub that never answers (a local server that
accepts and stays silent) times out naming the id and the offline ways."""

import os
import subprocess
import sys
import time

import pytest

from adapters_jax.interop import export_checkpoint
from tests.interop.conftest import save_trained
from tests.interop.test_cli import ROOT
from tests.interop.test_output_directory import one_line_error
from tests.silent_server import silent_server


@pytest.fixture
def exported(tmp_path, base_dir):
  _, _, checkpoint = save_trained(tmp_path / 'run', base_dir('bert'), 'bert', 'task', 'lora')
  return export_checkpoint(checkpoint, 'peft', tmp_path / 'exported')


def import_onto(model, exported, out, **env):
  args = [sys.executable, '-m', 'experiments.import_adapter', f'--from={exported}', '--format=peft',
          f'--model={model}', f'--out={out}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **env}
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_missing_relative_model_directory_is_named_not_downloaded(tmp_path, exported):
  # `workdirs/...` reads as `owner/name`; before, it went to the hub and failed as a download.
  line = one_line_error(import_onto('workdirs/never_trained', exported, tmp_path / 'out',
                                    HF_HUB_OFFLINE='1'))
  assert "No directory 'workdirs/never_trained'" in line and str(ROOT) in line
  assert 'download' not in line
  assert not (tmp_path / 'out').exists()


@pytest.fixture(name='silent_server')
def silent_server_fixture():
  with silent_server() as endpoint:
    yield endpoint


@pytest.mark.slow
def test_a_hub_that_never_answers_fails_in_bounded_time_in_one_line(tmp_path, exported, silent_server):
  start = time.monotonic()
  result = import_onto('owner/model', exported, tmp_path / 'out', HF_ENDPOINT=silent_server,
                       HF_HUB_CACHE=str(tmp_path / 'cache'), ADAPTERS_JAX_HUB_TIMEOUT='1')
  line = one_line_error(result)  # before: no output, no end (the subprocess timeout fires)
  assert time.monotonic() - start < 100
  for part in ("'owner/model'", silent_server, 'no answer within 1 s', 'HF_HUB_OFFLINE=1',
               'ADAPTERS_JAX_HUB_TIMEOUT'):
    assert part in line
  assert not (tmp_path / 'out').exists()
