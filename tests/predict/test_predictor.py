"""One `load_predictor` for an encoder, a T5 and a decoder run (each trained for a few steps on a
tiny model), checked against computations written here: the adapter restored by hand onto a
freshly loaded base, its logits for the encoder, and for T5 and the decoder greedy decoding that
reruns the whole model for every new token (no cache)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import models
from adapters_jax.checkpoint import restore
from adapters_jax.predict.predictor import Predictor, load_predictor
from adapters_jax.task_kinds.causal_lm import CausalLM
from adapters_jax.task_kinds.protocol import Classification
from adapters_jax.task_kinds.seq2seq import Seq2Seq
from adapters_jax.train import loop
from tests.predict.test_predict_generate import (
  BUFFER,
  E2E_PROMPTS,
  MRS,
  PAD,
  REVIEWS,
  SEP,
  _decode,
  _greedy_recompute,
  _lm_forward,
  _restored,
)
from tests.tiny_bert import write_tiny_bert
from tests.train.test_loop import smoke_config

TEXTS = ['A triumph of acting and heart.', 'A dull, lifeless mess.', 'It is a movie.']


@pytest.fixture(scope='module')
def encoder_run(tmp_path_factory):
  """A smoke Houlsby run of the quickstart config on a tiny random BERT."""
  tmp = tmp_path_factory.mktemp('encoder_run')
  loop.train_and_evaluate(smoke_config(str(write_tiny_bert(tmp / 'bert'))), str(tmp / 'run'))
  return tmp / 'run'


@pytest.mark.slow
def test_encoder_run_labels_with_the_restored_models_softmax(encoder_run):
  # Bugs caught: the best leaves not written in (the fresh adapter instead), padding rows of the
  # last batch kept or rows reordered (batch_size 2 for 3 texts), probabilities not matched to
  # their label names, the label not the argmax.
  predictor = load_predictor(str(encoder_run), batch_size=2)
  assert isinstance(predictor, Predictor) and isinstance(predictor.kind, Classification)
  predictions = predictor.predict(TEXTS)

  base = models.load_pretrained(predictor.experiment.config.model, head='classification',
                                num_labels=2)
  tokens = base.tokenizer(TEXTS, padding=True, return_tensors='np')
  ids, mask, types = (jnp.asarray(tokens[k]) for k in ('input_ids', 'attention_mask',
                                                        'token_type_ids'))
  spliced, params = restore.restore_adapter(encoder_run / 'best', base.model, base.params, ids,
                                            mask, types, deterministic=True)
  logits = np.asarray(spliced.apply(params, ids, mask, types, active='rotten_tomatoes'))
  probabilities = np.asarray(jax.nn.softmax(logits, -1))  # [3, 2]; label ids: rotten 0, fresh 1
  assert len(predictions) == len(TEXTS)
  for p, row in zip(predictions, probabilities, strict=True):
    np.testing.assert_allclose([p['probabilities']['rotten'], p['probabilities']['fresh']], row,
                               rtol=1e-4, atol=1e-5)
    assert p['label'] == ('rotten', 'fresh')[int(np.argmax(row))]
  assert predictor.predict([]) == []
  with pytest.raises(ValueError, match='max_new_tokens applies to decoder'):
    load_predictor(str(encoder_run), max_new_tokens=3)
  with pytest.raises(ValueError, match='Input 2: task .* takes one text'):
    predictor.predict(['Fine.', ('A pair', 'of texts')])


@pytest.mark.slow
def test_t5_run_answers_as_a_recomputed_greedy_decode(t5_run):
  # Bugs caught: the kind's evaluation decoding not used (another length, no task prefix), the
  # answers of padding rows kept (batch_size 2 for 3 texts), the answer not parsed back.
  predictor = load_predictor(str(t5_run), batch_size=2)
  assert isinstance(predictor.kind, Seq2Seq)
  predictions = predictor.predict(REVIEWS)

  sample = jnp.ones((1, 8), jnp.int32)
  tokenizer, spliced, params = _restored(t5_run, sample, sample, sample[:, :2])
  steps = 1 + max(len(tokenizer(w, add_special_tokens=False)['input_ids'])
                  for w in ('fresh', 'rotten'))
  forward = jax.jit(lambda p, ids, decoder_ids: spliced.apply(
      p, ids, jnp.ones_like(ids), decoder_ids, active='rotten_tomatoes', deterministic=True))
  expected = []
  for review in REVIEWS:
    ids = jnp.asarray([tokenizer(f'rotten_tomatoes text: {review}')['input_ids']])  # [1, S]
    decoder_ids = np.full((1, BUFFER), PAD, np.int32)  # T5 starts from the pad id
    for t in range(steps):
      decoder_ids[0, t + 1] = int(np.argmax(forward(params, ids, decoder_ids)[0, t]))
      if decoder_ids[0, t + 1] == SEP:
        break
    tokens = decoder_ids[0, 1:t + 2].tolist()
    expected.append(_decode(tokenizer, tokens[:-1] if tokens[-1] == SEP else tokens))
  assert [p['generated'] for p in predictions] == expected
  for p in predictions:
    word = p['generated'].replace(' ', '').lower()
    assert p['label'] == (word if word in ('fresh', 'rotten') else None)
    assert p.get('unparseable', False) is (p['label'] is None)


@pytest.mark.slow
def test_decoder_run_continues_prompts_as_a_recomputed_greedy_decode(lm_run):
  # Bugs caught: max_new_tokens ignored, prompts not rendered as training rendered them, the
  # generations of padding rows kept (batch_size 1 for 2 prompts), tokens after EOS kept.
  predictor = load_predictor(str(lm_run), batch_size=1, max_new_tokens=5)
  assert isinstance(predictor.kind, CausalLM)
  predictions = predictor.predict(MRS)

  sample = jnp.ones((1, 8), jnp.int32)
  tokenizer, spliced, params = _restored(lm_run, sample, sample)
  forward = _lm_forward(spliced)
  expected = [_greedy_recompute(forward, params, tokenizer(p, add_special_tokens=False)['input_ids'],
                                5, {SEP}) for p in E2E_PROMPTS]
  assert [p['generated'] for p in predictions] == [_decode(tokenizer, t) for t in expected]
  assert any(len(t) == 5 and t[-1] != SEP for t in expected)  # the cap, not EOS, ends one
  with pytest.raises(ValueError, match='Input 1: a language-model run takes one prompt'):
    predictor.predict([('a', 'pair')])
