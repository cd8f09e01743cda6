"""Shared fixtures for the data-layer tests: the real packaged MiniLM tokenizer."""

import pytest

from adapters_jax.models import resolve_checkpoint_dir


def minilm_path() -> str:
  return str(resolve_checkpoint_dir('minilm-l6'))


@pytest.fixture(scope='session')
def tokenizer():
  from adapters_jax.data import load_tokenizer

  return load_tokenizer(minilm_path())
