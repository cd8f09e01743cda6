"""The tiny transformers BERT/RoBERTa checkpoints of the interop tests, for the NNX export tests."""

from tests.interop.conftest import base_dir  # noqa: F401
