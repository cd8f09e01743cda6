"""Model ids as people type them: legacy hub ids without an owner reach the hub; a local directory
wins; a typo of a short name or a path-like string is refused. `huggingface_hub.snapshot_download`
is replaced by a recorder (the hub is not reachable from tests), or the hub is a local server that
accepts connections and never answers."""

import http.server
import os
import pathlib
import subprocess
import sys
import threading
import time

import huggingface_hub
import pytest

from adapters_jax.models import registry
from tests.silent_server import silent_server


@pytest.fixture
def downloads(monkeypatch, tmp_path):
  calls = []

  def fake_snapshot_download(repo_id, **kwargs):
    calls.append((repo_id, kwargs))
    return str(tmp_path / 'snapshot')

  monkeypatch.setattr(huggingface_hub, 'snapshot_download', fake_snapshot_download)
  return calls


@pytest.mark.parametrize('model_id', ['bert-base-uncased', 'roberta-base', 't5-small', 'gpt2',
                                      'google-bert/bert-base-uncased', 'FacebookAI/roberta-base'])
def test_hub_ids_with_and_without_owner_are_downloaded(downloads, model_id, tmp_path,
                                                       monkeypatch):
  monkeypatch.chdir(tmp_path)  # no directory of that name here
  assert registry.resolve_checkpoint_dir(model_id) == tmp_path / 'snapshot'
  (repo_id, kwargs), = downloads
  assert repo_id == model_id
  assert kwargs['revision'] is None
  assert not any('.bin' in p or '.pt' in p for p in kwargs['allow_patterns'])  # never pickles


def test_a_local_directory_wins_over_the_hub(downloads, tmp_path, monkeypatch):
  (tmp_path / 'bert-base-uncased').mkdir()
  monkeypatch.chdir(tmp_path)
  assert registry.resolve_checkpoint_dir('bert-base-uncased') == pathlib.Path('bert-base-uncased')
  assert downloads == []


@pytest.mark.parametrize('name, message', [
    ('minilm-l7', "did you mean 'minilm-l6'"),      # a typo of a short name
    ('./no_such_dir', "No directory './no_such_dir'"),  # a path, not an id
    ('workdirs/tiny_llama', "No directory 'workdirs/tiny_llama'"),  # where runs write checkpoints
    ('a/b/c', 'not an existing directory'),
    ('has space', 'not an existing directory'),
])
def test_implausible_ids_are_refused_without_download(downloads, name, message, tmp_path,
                                                      monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=message):
    registry.resolve_checkpoint_dir(name)
  assert downloads == []


def test_a_path_whose_first_part_is_a_local_directory_is_a_missing_directory(downloads, tmp_path,
                                                                            monkeypatch):
  (tmp_path / 'checkpoints').mkdir()
  monkeypatch.chdir(tmp_path)
  with pytest.raises(registry.ModelNotFoundError, match=f"No directory 'checkpoints/llama'.*{tmp_path}"):
    registry.resolve_checkpoint_dir('checkpoints/llama')
  assert downloads == []


def test_the_packaged_minilm_is_named_by_its_hub_id_and_a_directory_by_its_absolute_path(
    tmp_path, monkeypatch):
  (tmp_path / 'base').mkdir()
  monkeypatch.chdir(tmp_path)
  assert registry.portable_name('minilm-l6') == 'sentence-transformers/all-MiniLM-L6-v2'
  assert registry.portable_name('base') == str(tmp_path / 'base')
  assert registry.portable_name('google-bert/bert-base-uncased') == 'google-bert/bert-base-uncased'


@pytest.fixture
def silent_hub():
  """HF_ENDPOINT -> a server on 127.0.0.1 that accepts connections and never answers."""
  with silent_server() as endpoint:
    yield endpoint


def test_a_hub_that_never_answers_fails_within_the_timeout(silent_hub, monkeypatch, tmp_path):
  from huggingface_hub import constants

  monkeypatch.setattr(constants, 'ENDPOINT', silent_hub)
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setenv(registry.HUB_TIMEOUT_ENV, '0.5')
  raised = []

  def resolve():
    try:
      registry.resolve_checkpoint_dir('owner/model')
    except Exception as e:  # checked below
      raised.append(e)

  # In a thread, so the test itself ends even if the download waits forever (as it did).
  worker = threading.Thread(target=resolve, daemon=True)
  start = time.monotonic()
  worker.start()
  worker.join(timeout=20)
  assert not worker.is_alive(), 'the download still waits after 20 s'
  assert time.monotonic() - start < 10
  assert len(raised) == 1 and isinstance(raised[0], registry.HubDownloadError), raised
  message = str(raised[0])
  assert '\n' not in message
  for part in ("'owner/model'", silent_hub, 'no answer within 0.5 s', 'HF_HUB_OFFLINE=1', 'minilm-l6'):
    assert part in message


@pytest.mark.parametrize('value', ['soon', '0', '-3'])
def test_a_timeout_that_is_not_a_positive_number_is_refused(monkeypatch, value):
  monkeypatch.setenv(registry.HUB_TIMEOUT_ENV, value)
  with pytest.raises(ValueError, match=f'{registry.HUB_TIMEOUT_ENV}=.{value}. is not a number'):
    registry.hub_timeout_s()


@pytest.mark.slow
def test_training_on_a_missing_relative_model_path_says_so_in_one_line(tmp_path):
  root = pathlib.Path(__file__).resolve().parents[2]
  args = [sys.executable, '-m', 'experiments.train', '--config=experiments/configs/quickstart.py:smoke',
          f'--workdir={tmp_path / "run"}', '--config.model=workdirs/never_written']
  result = subprocess.run(args, cwd=root, env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'HF_HUB_OFFLINE': '1'},
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f"Cannot train {tmp_path / 'run'}: No directory 'workdirs/never_written' (relative paths start at "
      f"{root}); check the path, or pass a short name {sorted(registry.SHORT_NAMES)} or a hub id "
      "('owner/name')."], result.stderr


@pytest.fixture
def hub_without_repositories():
  """HF_ENDPOINT for a server that answers every request as the hub does for an unknown repository."""

  class NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
      body = b'{"error": "Repository not found"}'
      self.send_response(404)
      self.send_header('X-Error-Code', 'RepoNotFound')
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
      self.do_GET()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), NotFound)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()


def test_an_owner_name_path_that_is_neither_here_nor_on_the_hub_is_a_missing_directory(
    hub_without_repositories, monkeypatch, tmp_path):
  from huggingface_hub import constants

  monkeypatch.setattr(constants, 'ENDPOINT', hub_without_repositories)
  monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)
  with pytest.raises(registry.ModelNotFoundError,
                     match="No directory 'runs/tiny_llama'.*no repository of that name either"):
    registry.resolve_checkpoint_dir('runs/tiny_llama')
