"""The sequence-to-sequence task kind on a tiny random T5 (written as a real HF checkpoint with the
packaged MiniLM tokenizer): text-to-text encoding and per-key padding, the teacher-forced loss
against float64 numpy, greedy evaluation against a recompute-every-token reference, label words
parsed back (unparseable ones counted), and the choice of kind from the model's family."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from adapters_jax import data
from adapters_jax.methods import get_method
from adapters_jax.models import load_pretrained, resolve_checkpoint_dir
from adapters_jax.models.t5_random import write_random_t5
from adapters_jax.splicing.splice import Spliced, add_adapter
from adapters_jax.task_kinds.choice import kind_factory, kind_name
from adapters_jax.task_kinds.seq2seq import UNPARSEABLE, Seq2Seq
from tests.tiny_model import perturb_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4,
               relative_attention_num_buckets=8, relative_attention_max_distance=20,
               dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False)


def write_tiny_t5(directory):
  return write_random_t5(directory, tokenizer_dir=resolve_checkpoint_dir('minilm-l6'), seed=0,
                         **TINY_T5)


@pytest.fixture(scope='module')
def t5(tmp_path_factory):
  return load_pretrained(str(write_tiny_t5(tmp_path_factory.mktemp('tiny_t5'))))


@pytest.fixture(scope='module')
def spliced(t5):
  """The tiny T5 with a Compacter adapter whose weights are perturbed (so it changes outputs)."""
  host = Spliced(t5.model)
  kind = Seq2Seq.create(data.get_task('rte'), t5)
  args, kwargs = kind.sample_call()
  host, params = add_adapter(host, t5.params, 'a', get_method('compacter', size=8),
                             jax.random.key(1), *args, **kwargs)
  params = perturb_adapter(params, 'a', scale=0.5)

  def forward(p, *args, rng=None, **kwargs):
    return host.apply(p, *args, active='a', deterministic=rng is None, **kwargs)

  return forward, params


RTE = [data.Example('A cat sat on the mat.', 'A cat sat.', 0, 0),
       data.Example('Rain fell all day in the old town near the river.', 'It was dry.', 1, 1),
       data.Example('He left.', 'He stayed.', 1, 2)]


def _batch(kind, tokenizer, examples, mask=None):
  dataset = kind.encode(examples, tokenizer, max_length=64)
  index = np.arange(len(examples))
  return dataset.batch(index, index, data.length_buckets(64), mask)


def test_encode_pads_inputs_and_targets_to_their_own_buckets(t5):
  tokenizer, eos = t5.tokenizer, t5.config.eos_token_id
  kind = Seq2Seq.create(data.get_task('rte'), t5)
  batch = _batch(kind, tokenizer, RTE)
  # What a user would compute with the tokenizer alone.
  source = tokenizer('rte sentence1: A cat sat on the mat. sentence2: A cat sat.')['input_ids']
  entailment = tokenizer('entailment', add_special_tokens=False)['input_ids'] + [eos]
  not_entailment = tokenizer('not_entailment', add_special_tokens=False)['input_ids'] + [eos]
  # Inputs pad to their bucket (32 of 16/32/64); targets to theirs: the longest possible target
  # (not_entailment + EOS), below the smallest power-of-two bucket.
  assert batch['input_ids'].shape == (3, 32)
  assert batch['target_ids'].shape == (3, len(not_entailment)) == (3, kind.max_target_length)
  np.testing.assert_array_equal(batch['input_ids'][0, :len(source)], source)
  assert (batch['input_ids'][0, len(source):] == 0).all()
  np.testing.assert_array_equal(batch['attention_mask'][0], np.arange(32) < len(source))
  np.testing.assert_array_equal(batch['target_ids'][0, :len(entailment)], entailment)
  np.testing.assert_array_equal(batch['target_ids'][1, :len(not_entailment)], not_entailment)
  np.testing.assert_array_equal(batch['target_mask'].sum(1),
                                [len(entailment), len(not_entailment), len(not_entailment)])
  np.testing.assert_array_equal(batch['labels'], [0, 1, 1])


def _log_softmax64(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_teacher_forced_loss_matches_float64_reference(t5, spliced):
  forward, params = spliced
  kind = Seq2Seq.create(data.get_task('rte'), t5)
  batch = _batch(kind, t5.tokenizer, RTE, mask=np.array([1, 1, 0], np.float32))
  loss = float(kind.loss(forward, params, batch, None))
  # Reference: decoder inputs built by hand (start token, then the targets shifted right), the
  # model's logits, float64 log-softmax; only real target tokens of real rows count.
  targets = batch['target_ids']
  decoder_ids = np.concatenate([np.zeros((3, 1), np.int32), targets[:, :-1]], axis=1)
  logits = forward(params, batch['input_ids'], batch['attention_mask'], decoder_ids)
  log_probs = _log_softmax64(logits)
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]  # [B, T]
  weights = batch['target_mask'] * np.array([1, 1, 0])[:, None]
  expected = (nll * weights).sum() / weights.sum()
  np.testing.assert_allclose(loss, expected, rtol=2e-5)


def _greedy_by_recompute(forward, params, ids, mask, steps, eos, pad):
  """Greedy decoding that reruns the whole decoder for every new token (no cache)."""
  decoder_ids = np.zeros((ids.shape[0], 1), np.int32)  # the start token (T5: pad)
  done = np.zeros(ids.shape[0], bool)
  tokens = []
  for _ in range(steps):
    logits = np.asarray(forward(params, ids, mask, decoder_ids))
    token = np.where(done, pad, logits[:, -1].argmax(-1)).astype(np.int32)
    tokens.append(token)
    done |= token == eos
    decoder_ids = np.concatenate([decoder_ids, token[:, None]], axis=1)
  return np.stack(tokens, axis=1)


def test_evaluation_decodes_like_recomputing_every_token(t5, spliced):
  forward, params = spliced
  kind = Seq2Seq.create(data.get_task('stsb'), t5)  # targets of 4 tokens: '3', '.', '8', EOS
  examples = [data.Example(e.text_a, e.text_b, 2.5, e.idx) for e in RTE]
  batch = _batch(kind, t5.tokenizer, examples)
  outputs = jax.jit(lambda p, b: kind.eval_outputs(forward, p, b))(params, batch)
  expected = _greedy_by_recompute(forward, params, batch['input_ids'], batch['attention_mask'],
                                  kind.max_target_length, t5.config.eos_token_id,
                                  t5.config.pad_token_id)
  assert outputs['tokens'].shape == (3, kind.max_target_length) == (3, 4)
  np.testing.assert_array_equal(outputs['tokens'], expected)
  np.testing.assert_array_equal(outputs['labels'], [2.5, 2.5, 2.5])


def _tokens(tokenizer, words, eos, length=6):
  rows = []
  for word in words:
    ids = tokenizer(word, add_special_tokens=False)['input_ids'] + [eos]
    rows.append((ids + [0] * length)[:length])
  return np.asarray(rows, np.int32)


def test_metrics_parse_label_words_and_count_unparseable_as_wrong(t5):
  eos = t5.config.eos_token_id
  mrpc = Seq2Seq.create(data.get_task('mrpc'), t5)
  # Gold: 1 1 0 0; generated: right, unparseable, right, unparseable.
  tokens = _tokens(t5.tokenizer, ['equivalent', 'maybe', 'not_equivalent', 'equivalent yes'], eos)
  metrics = mrpc.metrics({'tokens': tokens, 'labels': np.array([1, 1, 0, 0])})
  # By hand: accuracy 2/4; F1 of class 1: tp 1, fn 1 (unparseable counts as the wrong class),
  # fp 1 (the unparseable row with gold 0) -> 2/(2+1+1) = 0.5.
  assert metrics['accuracy'] == 0.5 and metrics['f1'] == 0.5 and metrics[UNPARSEABLE] == 2
  # Tokens after EOS are not read.
  tokens = _tokens(t5.tokenizer, ['equivalent'], eos)
  tokens[0, -1] = t5.tokenizer.convert_tokens_to_ids('maybe')
  assert mrpc.metrics({'tokens': tokens, 'labels': np.array([1])})['accuracy'] == 1.0

  stsb = Seq2Seq.create(data.get_task('stsb'), t5)
  tokens = _tokens(t5.tokenizer, ['1.0', '2.0', '3.0', 'high'], eos)
  metrics = stsb.metrics({'tokens': tokens, 'labels': np.array([1.0, 2.0, 3.0, 4.0])})
  # The unparseable one scores -1.0: predictions (1, 2, 3, -1) against (1, 2, 3, 4).
  expected = np.corrcoef([1.0, 2.0, 3.0, -1.0], [1.0, 2.0, 3.0, 4.0])[0, 1]
  np.testing.assert_allclose(metrics['pearson'], expected, rtol=1e-9)
  assert metrics[UNPARSEABLE] == 1


def test_kind_follows_the_model_family_and_refuses_what_cannot_run():
  rte, stsb = data.get_task('rte'), data.get_task('stsb')
  assert kind_name(rte, 't5') == 'seq2seq' and kind_name(stsb, 't5') == 'seq2seq'
  assert kind_name(rte, 'bert') == 'classification' and kind_name(stsb, 'roberta') == 'regression'
  assert kind_factory(rte, 't5') is Seq2Seq
  with pytest.raises(ValueError, match=r"cannot run on a 't5' model: it runs \['seq2seq'\]"):
    kind_name(rte, 't5', 'classification')
  with pytest.raises(ValueError, match="cannot run on a 'bert' model"):
    kind_name(rte, 'bert', 'seq2seq')
  with pytest.raises(ValueError, match="did you mean 'seq2seq'"):
    kind_name(rte, 't5', 'seq2sq')
  with pytest.raises(ValueError, match="set --config.task_kind='regression'"):
    kind_name(stsb, 'bert', 'classification')


def test_seq2seq_on_an_encoder_is_a_clear_error(tiny_bert_dir):
  bert = load_pretrained(tiny_bert_dir, head=None)
  with pytest.raises(ValueError, match='needs an encoder-decoder'):
    Seq2Seq.create(data.get_task('rte'), bert)


@pytest.mark.slow
def test_cli_trains_a_t5_adapter_and_reports_generation_metrics(tmp_path):
  """`experiments.train` on the miniature seq2seq config (smoke size) with a tiny T5 v1.0."""
  model = write_random_t5(tmp_path / 't5', tokenizer_dir=resolve_checkpoint_dir('minilm-l6'),
                          **{**TINY_T5, 'feed_forward_proj': 'relu', 'tie_word_embeddings': True})
  workdir = tmp_path / 'run'
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train',
       '--config=experiments/configs/mini_t5_rotten_tomatoes.py:smoke', f'--workdir={workdir}',
       f'--config.model={model}', '--config.num_train_steps=12', '--config.eval_every_steps=12',
       '--config.checkpoint_every_steps=12', '--config.learning_rate=0.01'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads((workdir / 'result.json').read_text())
  assert result['config']['task_kind'] == 'seq2seq' and result['train_steps'] == 12
  for metrics in (result['validation_metrics']['validation'], result['test_metrics']['test']):
    assert set(metrics) == {'accuracy', 'f1', UNPARSEABLE}
    assert 0 <= metrics[UNPARSEABLE] <= 32 and 0 <= metrics['accuracy'] <= 1
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in records if r['split'] == 'train']
  assert len(losses) == 12
  # From random logits (about log(30522) = 10.3) the adapter learns to answer with label words.
  assert losses[0] > 9 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 2, losses


@pytest.mark.slow
def test_make_random_t5_script_writes_a_loadable_t5_with_the_packaged_tokenizer(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  run = subprocess.run([sys.executable, 'scripts/make_random_t5.py', f'--out={tmp_path}',
                        '--d_model=32', '--num_layers=1', '--d_ff=64'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  pre = load_pretrained(str(tmp_path))
  assert (pre.config.d_model, pre.config.d_kv, pre.config.num_decoder_layers) == (32, 8, 1)
  assert pre.config.tie_word_embeddings and pre.config.feed_forward_proj == 'relu'
  # MiniLM's word pieces: [PAD] = 0 is pad and decoder start, [SEP] = 102 ends an answer.
  assert (pre.config.vocab_size, pre.config.pad_token_id, pre.config.eos_token_id) == (30522, 0, 102)
  assert pre.tokenizer.convert_ids_to_tokens([0, 102]) == ['[PAD]', '[SEP]']
