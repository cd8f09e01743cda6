"""Tiny trained runs the prediction tests share: each trains once per test process."""

import pathlib

import pytest

from adapters_jax.models import resolve_checkpoint_dir
from adapters_jax.models.decoder_export import random_decoder_checkpoint
from adapters_jax.models.t5_random import write_random_t5
from adapters_jax.train import loop
from experiments.configs import mini_lora_lm, mini_t5_rotten_tomatoes
from experiments.make_random_decoder import TINY_LLAMA
from tests.train.test_seq2seq import TINY_T5

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope='session')
def t5_run(tmp_path_factory):
  """A 2-step Houlsby run of the miniature seq2seq config (smoke size) on a tiny random T5 v1.1
  (gated GELU, untied head: its random answers depend on the input; a v1.0 one answers the same
  token whatever it reads): its answers are still token salad."""
  tmp = tmp_path_factory.mktemp('t5_run')
  model = write_random_t5(tmp / 't5', tokenizer_dir=resolve_checkpoint_dir('minilm-l6'), seed=0,
                          **TINY_T5)
  config = mini_t5_rotten_tomatoes.get_config('smoke')
  config.model = str(model)
  config.max_eval_examples = 8
  config.eval_batch_size = 8
  loop.train_and_evaluate(config, str(tmp / 'run'))
  return tmp / 'run'


@pytest.fixture(scope='session')
def lm_run(tmp_path_factory):
  """A 2-step LoRA run of the miniature E2E config (smoke size) on a tiny random Llama."""
  tmp = tmp_path_factory.mktemp('lm_run')
  model = random_decoder_checkpoint(tmp / 'llama', TINY_LLAMA, seed=0,
                                    tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  config = mini_lora_lm.get_config('smoke')
  config.model = str(model)
  config.data_dir = str(ROOT / 'experiments/data/mini_e2e')
  config.lm.max_new_tokens = 8
  config.max_eval_examples = 8
  loop.train_and_evaluate(config, str(tmp / 'run'))
  return tmp / 'run'
