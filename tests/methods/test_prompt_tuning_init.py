"""Prompt tuning's three inits read from the host's embedding matrix as the user would by hand,
the config's checks, and the refusal of a host without an input-embeddings site."""

import jax
import numpy as np
import pytest
from flax import traverse_util
from transformers import AutoTokenizer, BertConfig, FlaxBertModel

from adapters_jax.methods import PromptTuningConfig, get_method, method_from_dict
from adapters_jax.models import BertEncoderModel, EncoderConfig, resolve_checkpoint_dir
from adapters_jax.splicing.composition import (
  Average,
  CompositionError,
  Parallel,
  PerExample,
  Stack,
)
from adapters_jax.splicing.sites import SiteMatchError
from adapters_jax.splicing.splice import add_adapter

CONFIG = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                       intermediate_size=24, max_position_embeddings=32)
IDS = np.arange(12, dtype=np.int32).reshape(2, 6)


@pytest.fixture(scope='module')
def host():
  model = BertEncoderModel(CONFIG)
  return model, model.init(jax.random.key(0), IDS)['params']


def _prompt_and_table(host, method, seed=0):
  model, params = host
  _, grafted = add_adapter(model, params, 'p', method, jax.random.key(seed), IDS)
  flat = traverse_util.flatten_dict(grafted, sep='/')
  prompt = np.asarray(flat['embeddings/input_embeddings/adapters/p/prompt'])
  return prompt, np.asarray(flat['embeddings/word_embeddings/embedding'])


def test_random_uniform_fills_the_interval_and_depends_on_the_key(host):
  prompt, _ = _prompt_and_table(host, get_method('prompt_tuning', length=20, init_scale=0.3))
  assert prompt.shape == (20, 16)
  assert np.abs(prompt).max() <= 0.3 and np.abs(prompt).max() > 0.25
  assert abs(prompt.mean()) < 0.03  # centred, not U(0, 0.3)
  other, _ = _prompt_and_table(host, get_method('prompt_tuning', length=20, init_scale=0.3), 1)
  assert not np.array_equal(prompt, other)


def test_from_token_ids_repeats_the_ids_and_takes_their_rows(host):
  method = get_method('prompt_tuning', length=5, init='from_token_ids', init_token_ids=(7, 3))
  prompt, table = _prompt_and_table(host, method)
  np.testing.assert_array_equal(prompt, table[[7, 3, 7, 3, 7]])


def test_from_text_tokenizes_without_special_tokens(host):
  tokenizer = AutoTokenizer.from_pretrained(str(resolve_checkpoint_dir('minilm-l6')))
  method = get_method('prompt_tuning', length=3, init_text='classify this review').with_tokenizer(
      tokenizer)
  expected = tokenizer('classify this review', add_special_tokens=False)['input_ids']
  assert method.init == 'from_token_ids' and method.init_token_ids == tuple(expected)
  # The record rebuilds the same config (the run's checkpoint JSON).
  assert method_from_dict(method.to_dict()) == method
  with pytest.raises(ValueError, match='with_tokenizer'):
    _prompt_and_table(host, get_method('prompt_tuning', init_text='classify this'))


def test_sample_vocab_takes_distinct_rows_of_the_vocabulary(host):
  prompt, table = _prompt_and_table(host, get_method('prompt_tuning', length=8,
                                                     init='sample_vocab'))
  rows = [int(np.flatnonzero((table == row).all(axis=1))[0]) for row in prompt]
  assert len(set(rows)) > 4  # sampled, not one row repeated
  np.testing.assert_array_equal(prompt, table[rows])


def test_config_checks_name_the_valid_choices():
  with pytest.raises(ValueError, match='prefix_after_bos'):
    PromptTuningConfig(combine='suffix')
  with pytest.raises(ValueError, match='sample_vocab'):
    PromptTuningConfig(init='text')
  with pytest.raises(ValueError, match='init_token_ids'):
    PromptTuningConfig(init='from_token_ids')


def test_a_host_without_input_embeddings_is_refused_by_name():
  hf = FlaxBertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=24), seed=0)
  with pytest.raises(SiteMatchError, match='`input_embeddings`.*Hugging Face Flax models do not'):
    add_adapter(hf.module, hf.params, 'p', get_method('prompt_tuning'), jax.random.key(0), IDS,
                np.ones_like(IDS), np.zeros_like(IDS), np.arange(6)[None].repeat(2, 0), None)


def test_prompt_runs_alone_or_stacked_but_not_chosen_per_row(host):
  model, params = host
  spliced, grafted = add_adapter(model, params, 'p', get_method('prompt_tuning', length=3),
                                 jax.random.key(0), IDS)
  spliced, grafted = add_adapter(spliced, grafted, 'l', get_method('lora'), jax.random.key(1), IDS)
  out = spliced.apply(grafted, IDS, active=Stack('p', 'l')).last_hidden_state
  assert out.shape == (2, 6 + 3, 16)
  for active in (PerExample('p', None), Parallel('p', 'l'), Average('p', 'l')):
    with pytest.raises(CompositionError, match=r"\['p'\] lengthen the sequence.*Stack"):
      spliced.apply(grafted, IDS, active=active, adapter_index=np.zeros(2, np.int32)
                    if isinstance(active, PerExample) else None)
