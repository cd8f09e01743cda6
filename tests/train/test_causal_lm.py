"""The causal-LM task kind on a tiny Llama and GPT-2: the loss against a float64 numpy reference,
perplexity, packing (no attention across examples; packed loss == unpacked loss) and generation
inside the evaluation step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax.data.buckets import length_buckets
from adapters_jax.data.lm_dataset import LMDataset
from adapters_jax.data.lm_jsonl import LMExample
from adapters_jax.data.lm_packing import pack_rows, rows_batch, single_rows
from adapters_jax.models import DecoderLM, GenerationConfig, generate
from adapters_jax.task_kinds.causal_lm import CausalLM, decode_text, lm_loss, perplexity_metrics
from tests.models.tiny_decoders import TINY_DECODERS


@pytest.fixture(scope='module')
def tokenizer():
  from adapters_jax.data import load_tokenizer
  from adapters_jax.models import resolve_checkpoint_dir

  return load_tokenizer(str(resolve_checkpoint_dir('minilm-l6')))


def _model(family):
  model = DecoderLM(TINY_DECODERS[family])
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  # Spread the weights so that attention across examples would change the logits visibly.
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim == 2 else x, params)

  def forward(p, *args, rng=None, **kwargs):
    return model.apply({'params': p}, *args, deterministic=True, **kwargs)

  return model, params, forward


def _examples(lengths, vocab=61, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for n in lengths:
    ids = rng.integers(3, vocab, size=n).astype(np.int32)
    mask = np.arange(n) >= n // 2  # second half is the completion
    out.append(LMExample(ids, mask, ids[:n // 2], ()))
  return out


def _reference_loss(logits, targets, weights, smoothing):
  """Float64 numpy: log-softmax, NLL of the target, smoothing as (1-a) nll + a mean(-log p)."""
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  per_token = (1 - smoothing) * nll - smoothing * log_probs.mean(-1)
  return (per_token * weights).sum() / weights.sum()


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_loss_matches_float64_reference_over_target_tokens_only(smoothing):
  # Bug caught: mean over all positions (padding and prompt included), smoothing toward the
  # wrong distribution, or targets not shifted.
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
  targets = rng.integers(0, 7, size=(2, 5)).astype(np.int32)
  weights = np.array([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], np.float32)
  got = float(lm_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), smoothing))
  assert got == pytest.approx(_reference_loss(logits, targets, weights, smoothing), rel=1e-5)


def test_perplexity_is_exp_of_token_mean_not_mean_of_example_perplexities():
  # NLL sums 3 over 1 token and 3 over 3 tokens -> 6 / 4 = 1.5 per token.
  # Bug caught: averaging per-example means ((3 + 1) / 2 = 2) or per-example perplexities.
  metrics = perplexity_metrics(np.array([3.0, 3.0]), np.array([1.0, 3.0]))
  assert metrics['loss'] == pytest.approx(1.5)
  assert metrics['perplexity'] == pytest.approx(np.exp(1.5))
  assert metrics['log_likelihood'] == pytest.approx(-1.5)
  with pytest.raises(ValueError, match='raise max_length'):
    perplexity_metrics(np.array([0.0]), np.array([0.0]))


@pytest.mark.parametrize('family', sorted(TINY_DECODERS))
def test_packed_examples_compute_what_they_compute_alone(family):
  # Bug caught: attention crossing from one packed example into the next (segment mask ignored),
  # or positions continuing across examples.
  model, params, _ = _model(family)
  examples = _examples([5, 3, 6])
  packed = rows_batch(examples, [[0, 1, 2]], row_length=16)
  alone = rows_batch(examples, single_rows(3), row_length=16)  # one example per row, padded
  apply = jax.jit(model.apply)
  packed_logits = apply({'params': params}, packed['input_ids'], packed['attention_mask'],
                        packed['positions'], segment_ids=packed['segment_ids'])
  # Alone: no segments, default positions; right padding never reaches the real tokens.
  alone_logits = apply({'params': params}, alone['input_ids'], alone['attention_mask'])
  start = 0
  for row, example in enumerate(examples):
    n = len(example.input_ids)
    np.testing.assert_allclose(packed_logits[0, start:start + n], alone_logits[row, :n],
                               rtol=1e-5, atol=1e-5)
    start += n


@pytest.mark.parametrize('family', sorted(TINY_DECODERS))
def test_packed_loss_equals_unpacked_loss(family):
  # Bug caught: the last token of one example trained on the first of the next, or the loss
  # averaged per row instead of per target token.
  _, params, forward = _model(family)
  examples = _examples([5, 3, 6, 4, 7])
  kind = CausalLM(spec=None, tokenizer=None, model_config=None, label_smoothing=0.1)
  plan = pack_rows([len(e.input_ids) for e in examples], row_length=12)
  assert len(plan) < len(examples)
  ones = lambda n: {'example_mask': np.ones(n, np.float32)}  # noqa: E731
  packed = {k: jnp.asarray(v) for k, v in
            {**rows_batch(examples, plan, 12), **ones(len(plan))}.items()}
  unpacked = {k: jnp.asarray(v) for k, v in
              {**rows_batch(examples, single_rows(5), 12), **ones(5)}.items()}
  loss = jax.jit(lambda p, b: kind.loss(forward, p, b, jax.random.key(0)))
  assert float(loss(params, packed)) == pytest.approx(float(loss(params, unpacked)), rel=1e-5)


def test_evaluation_generates_what_generate_does_and_scores_it(tokenizer):
  # Bug caught: generation from the wrong prompt rows, or predictions paired with other rows'
  # references (BLEU is 100 only when every row meets its own reference).
  model, params, forward = _model('llama')
  examples = _examples([6, 8, 7])
  dataset = LMDataset.build(examples, 16, pack=False, pad_id=0, prompts=True, first_index=2)
  batch = dataset.batch(np.array([2, 0, 1]), np.arange(3), length_buckets(16))
  np.testing.assert_array_equal(batch['example_index'], [4, 2, 3])
  np.testing.assert_array_equal(batch['prompt_ids'][0, -3:], examples[2].prompt_ids)
  assert batch['prompt_mask'][0].sum() == 3 and batch['prompt_mask'][0, -1] == 1  # left-padded
  gen_config = GenerationConfig(max_new_tokens=5, eos_token_ids=(), pad_token_id=0)
  expected = np.asarray(generate(model, params, batch['prompt_ids'], batch['prompt_mask'],
                                 gen_config).tokens)
  texts = [decode_text(tokenizer, row) for row in expected]
  from adapters_jax.data import get_task

  kind = CausalLM(spec=get_task('e2e_nlg'), tokenizer=tokenizer, model_config=model.config,
                  generation=gen_config,
                  references=[(), (), (texts[1],), (texts[2],), (texts[0], 'other')])
  outputs = jax.jit(lambda p, b: kind.eval_outputs(forward, p, b))(
      params, {k: jnp.asarray(v) for k, v in batch.items()})
  np.testing.assert_array_equal(outputs['generated'], expected)
  metrics = kind.metrics({k: np.asarray(v) for k, v in outputs.items()})
  assert metrics['bleu'] == pytest.approx(100.0)
  assert {'loss', 'perplexity', 'log_likelihood', 'nist', 'rouge_l', 'cider'} <= set(metrics)


def test_decoders_train_the_causal_lm_kind_and_refuse_others():
  # Bug caught: a decoder sent to the classification kind (a head it does not have).
  from adapters_jax.data import get_task
  from adapters_jax.task_kinds.choice import kind_name

  assert kind_name(get_task('e2e_nlg'), 'llama') == 'causal_lm'
  assert kind_name(get_task('lm_jsonl'), 'gpt2', 'causal_lm') == 'causal_lm'
  with pytest.raises(ValueError, match=r"cannot run on a 'llama' model: it runs \['causal_lm'\]"):
    kind_name(get_task('lm_jsonl'), 'llama', 'classification')


def test_generation_settings_from_the_config(tokenizer):
  # Bugs caught: beams asked for but greedy decoding run, beam options silently ignored without
  # beams, or packed rows generating from the first example's prompt only.
  import types

  from adapters_jax.config.schema import run_config
  from adapters_jax.data import get_task
  from adapters_jax.models.beam_search import BeamSearchConfig

  pretrained = types.SimpleNamespace(tokenizer=tokenizer, config=TINY_DECODERS['llama'])
  config = run_config()
  config.lm.update({'num_beams': 10, 'length_penalty': 0.8, 'no_repeat_ngram_size': 4})
  kind = CausalLM.create(get_task('e2e_nlg'), pretrained, config)
  assert kind.generation == BeamSearchConfig(
      num_beams=10, max_new_tokens=64, length_penalty=0.8, no_repeat_ngram_size=4,
      eos_token_ids=(102, 2), pad_token_id=0)  # [SEP] ends completions; the model's EOS too
  config.lm.num_beams = 1
  with pytest.raises(ValueError, match='set --config.lm.num_beams > 1'):
    CausalLM.create(get_task('e2e_nlg'), pretrained, config)
  config.lm.update({'length_penalty': 1.0, 'no_repeat_ngram_size': 0, 'pack': True})
  with pytest.raises(ValueError, match='set --config.lm.pack=False'):
    CausalLM.create(get_task('e2e_nlg'), pretrained, config)
  assert CausalLM.create(get_task('lm_jsonl'), pretrained, config).generation is None


def test_each_generation_task_is_scored_by_its_own_metric():
  # Bug caught: GSM8K answers scored by BLEU, or E2E texts by parsed-answer accuracy.
  from adapters_jax.data import get_task, math_answers, text_metrics
  from adapters_jax.task_kinds.causal_lm import generation_scorer
  from adapters_jax.task_kinds.choice import kind_name

  assert generation_scorer(get_task('metamathqa')) is math_answers.answer_metrics
  assert generation_scorer(get_task('e2e_nlg')) is text_metrics.generation_metrics
  assert generation_scorer(get_task('lm_jsonl')) is None
  assert kind_name(get_task('metamathqa'), 'llama') == 'causal_lm'


def test_language_modelling_tasks_and_other_kinds_do_not_mix():
  # Bug caught: an encoder "regressing" on E2E records (its label_names are None), or a decoder
  # fed GLUE examples it cannot tokenise; both crash deep in encoding without this check.
  from adapters_jax.data import get_task
  from adapters_jax.task_kinds.choice import kind_name

  with pytest.raises(ValueError, match=r"'e2e_nlg' is language modelling, .*--dry_run_model="):
    kind_name(get_task('e2e_nlg'), 'bert')
  with pytest.raises(ValueError, match=r"causal_lm' trains language-modelling tasks .*not 'rte'"):
    kind_name(get_task('rte'), 'llama')
