"""Model ids as people type them: legacy hub ids without an owner reach the hub; a local directory
wins; a typo of a short name or a path-like string is refused. `huggingface_hub.snapshot_download`
is replaced by a recorder (the hub is not reachable from tests)."""

import pathlib

import huggingface_hub
import pytest

from adapters_jax.models import registry


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
    ('./no_such_dir', 'not an existing directory'),  # a path, not an id
    ('a/b/c', 'not an existing directory'),
    ('has space', 'not an existing directory'),
])
def test_implausible_ids_are_refused_without_download(downloads, name, message, tmp_path,
                                                      monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=message):
    registry.resolve_checkpoint_dir(name)
  assert downloads == []
