"""`experiments.predict` on a T5 (seq2seq) run and a decoder (causal LM) run, through the CLI, against
references written here: the input strings by hand, the adapter restored onto a freshly loaded base
by hand, and greedy decoding that reruns the whole model for every new token (no cache)."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from adapters_jax.checkpoint import restore
from adapters_jax.data import e2e, get_task
from adapters_jax.data.lm_jsonl import parse_record, tokenize_record
from adapters_jax.models import load_pretrained, resolve_checkpoint_dir
from adapters_jax.models.beam_search import BeamSearchConfig, beam_search
from adapters_jax.predict.predictor import load_predictor
from adapters_jax.predict.serving import load_adapter_server
from adapters_jax.task_kinds.inputs import prompt_record
from adapters_jax.task_kinds.seq2seq import answer_fields
from adapters_jax.train import run_files
from experiments.make_random_decoder import TINY_LLAMA

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
REVIEWS = ['A quiet, devastating film.', 'Two hours I will never get back.', 'It is a movie.']
MRS = ['name[The Eagle], food[French]', 'name[Aromi], eatType[pub], area[riverside]']
# The E2E prompts of MRS as the LoRA repository's files write them (attribute renamed, ' ||').
E2E_PROMPTS = ['name : The Eagle | food : French ||',
               'name : Aromi | Type : pub | area : riverside ||']
BUFFER = 32  # tokens of the references' fixed-size buffers (one compilation)
SEP, PAD = 102, 0  # the MiniLM vocabulary's [SEP] (every run's EOS here) and [PAD]


def _predict_cli(workdir, lines, *flags):
  proc = subprocess.run([sys.executable, '-m', 'experiments.predict', f'--workdir={workdir}', *flags],
                        input='\n'.join(lines) + '\n', cwd=ROOT, env=ENV, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]


def _restored(workdir, *sample_args):
  """The run's base loaded afresh with its best adapter restored onto it."""
  config = json.loads((workdir / run_files.CONFIG_FILE).read_text())
  base = load_pretrained(config['model'])
  spliced, params = restore.restore_adapter(workdir / 'best', base.model, base.params,
                                               *sample_args, deterministic=True)
  return base.tokenizer, spliced, params


def _decode(tokenizer, ids):
  return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_t5_run_answers_like_a_recomputed_greedy_decode_of_the_prefixed_input(t5_run):
  # Bugs caught: the task prefix or field name left out ("rotten_tomatoes text: "), decoding that
  # misuses the cache, another adapter (or none) active, tokens after EOS kept, the answer not
  # parsed back (a label word that is no label, or salad without `unparseable`).
  lines = _predict_cli(t5_run, REVIEWS)
  assert [line['text'] for line in lines] == REVIEWS

  sources = [f'rotten_tomatoes text: {review}' for review in REVIEWS]
  sample = jnp.ones((1, 8), jnp.int32)
  tokenizer, spliced, params = _restored(t5_run, sample, sample, sample[:, :2])
  # The longest label word, then EOS: what evaluation generates at most.
  steps = 1 + max(len(tokenizer(w, add_special_tokens=False)['input_ids']) for w in ('fresh', 'rotten'))
  forward = jax.jit(lambda p, ids, decoder_ids: spliced.apply(
      p, ids, jnp.ones_like(ids), decoder_ids, active='rotten_tomatoes', deterministic=True))

  def answer(source):
    ids = jnp.asarray([tokenizer(source)['input_ids']])  # [1, S], [CLS] ... [SEP] as in training
    decoder_ids = np.full((1, BUFFER), PAD, np.int32)  # T5 starts from the pad id; causal, so
    for t in range(steps):                              # later slots do not reach position t
      logits = forward(params, ids, decoder_ids)  # [1, BUFFER, vocab], the whole decoder rerun
      decoder_ids[0, t + 1] = int(np.argmax(logits[0, t]))
      if decoder_ids[0, t + 1] == SEP:
        break
    tokens = decoder_ids[0, 1:t + 2].tolist()
    return _decode(tokenizer, tokens[:-1] if tokens[-1] == SEP else tokens)

  expected = [answer(source) for source in sources]
  # The answers depend on the input and on its prefix, so a wrong format would show.
  assert len(set(expected)) > 1
  assert [answer(f'text: {review}') for review in REVIEWS] != expected
  assert [line['generated'] for line in lines] == expected
  for line in lines:
    word = line['generated'].replace(' ', '').lower()
    if word in ('fresh', 'rotten'):
      assert line['label'] == word and 'unparseable' not in line
    else:
      assert line['label'] is None and line['unparseable'] is True


def _greedy_recompute(forward, params, prompt, steps, eos_ids):
  """Greedy tokens after `prompt` (a list of ids), rerunning the decoder on the whole sequence for
  every token (`forward(params, ids [1, BUFFER], mask)`, right-padded: the decoder is causal);
  stops after the first token in `eos_ids` (kept)."""
  ids = np.full((1, BUFFER), PAD, np.int32)
  ids[0, :len(prompt)] = prompt
  for t in range(len(prompt), len(prompt) + steps):
    mask = (np.arange(BUFFER) < t)[None].astype(np.int32)
    ids[0, t] = int(np.argmax(forward(params, ids, mask)[0, t - 1]))
    if ids[0, t] in eos_ids:
      break
  return ids[0, len(prompt):t + 1].tolist()


def _lm_forward(spliced):
  return jax.jit(lambda p, ids, mask: spliced.apply(p, ids, mask, active='e2e_nlg',
                                                    deterministic=True))


def _with_config(workdir, tmp_path, change_config, change_model=None):
  """A copy of `workdir` whose config.json (and, with `change_model`, base model config.json) is
  changed."""
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  config = json.loads((copy / run_files.CONFIG_FILE).read_text())
  if change_model is not None:
    model = tmp_path / 'model'
    shutil.copytree(config['model'], model)
    model_config = json.loads((model / 'config.json').read_text())
    change_model(model_config)
    (model / 'config.json').write_text(json.dumps(model_config))
    config['model'] = str(model)
  change_config(config)
  (copy / run_files.CONFIG_FILE).write_text(json.dumps(config))
  return copy


@pytest.mark.slow
def test_decoder_run_continues_e2e_prompts_greedily_and_stops_at_eos(lm_run, tmp_path):
  # Bugs caught: the MR not rendered as the training prompt (or the ' ||' left out), a cache that
  # drifts from the full forward pass, --max_new_tokens ignored, generation that runs past an EOS
  # id of the model's config, the adapter not restored.
  sample = jnp.ones((1, 8), jnp.int32)
  tokenizer, spliced, params = _restored(lm_run, sample, sample)
  forward = _lm_forward(spliced)
  assert tokenizer.bos_token_id is None  # MiniLM's vocabulary: a prompt starts with its own text
  prompts = [tokenizer(p, add_special_tokens=False)['input_ids'] for p in E2E_PROMPTS]
  free = _greedy_recompute(forward, params, prompts[0], 6, {SEP})
  # Make a token the first prompt generates at step >= 2 an EOS id of the base's config.json.
  stop_at = next(k for k in range(2, len(free)) if free[k] not in free[:k])
  stop = free[stop_at]
  run = _with_config(lm_run, tmp_path, lambda c: None,
                     lambda m: m.update(eos_token_id=[TINY_LLAMA['eos_token_id'], stop]))
  lines = _predict_cli(run, MRS, '--max_new_tokens=6')
  assert [line['text'] for line in lines] == MRS
  expected = [_greedy_recompute(forward, params, p, 6, {SEP, stop}) for p in prompts]
  assert expected[0] == free[:stop_at + 1]  # stopped at the new EOS, before 6 tokens
  assert [line['generated'] for line in lines] == [_decode(tokenizer, t) for t in expected]


@pytest.mark.slow
def test_decoder_run_uses_its_beam_settings(lm_run, tmp_path):
  # Bugs caught: the run's beam count, length penalty or no-repeat n-gram size ignored (greedy
  # instead, or HF's defaults), the config's max_new_tokens not used when the flag is absent.
  # No-repeat size 1: no token of the prompt or of the answer twice, which a random model's answer
  # would otherwise do within 7 tokens.
  beams = dict(num_beams=3, length_penalty=0.8, no_repeat_ngram_size=1)
  run = _with_config(lm_run, tmp_path, lambda c: c['lm'].update(beams, max_new_tokens=7))
  predictions = load_predictor(str(run)).predict(MRS)

  sample = jnp.ones((1, 8), jnp.int32)
  tokenizer, spliced, params = _restored(lm_run, sample, sample)
  forward = _lm_forward(spliced)
  def search(ids, **settings):
    out = beam_search(spliced, params, ids, jnp.ones_like(ids),
                      BeamSearchConfig(max_new_tokens=7, eos_token_ids=(SEP,), pad_token_id=PAD,
                                       **settings), active='e2e_nlg')
    return _decode(tokenizer, np.asarray(out.tokens[0, :int(out.lengths[0])]))

  searched, repeating, greedy = [], [], []
  for prompt in E2E_PROMPTS:
    ids = jnp.asarray([tokenizer(prompt, add_special_tokens=False)['input_ids']])
    searched.append(search(ids, **beams))
    repeating.append(search(ids, **{**beams, 'no_repeat_ngram_size': 0}))
    greedy.append(_decode(tokenizer, _greedy_recompute(forward, params, ids[0].tolist(), 7, {SEP})))
  assert [p['generated'] for p in predictions] == searched
  # Each setting changes the answers here, so ignoring it would show.
  assert searched != greedy and searched != repeating


@pytest.mark.slow
def test_several_workdirs_refuse_a_t5_or_decoder_run(t5_run, lm_run):
  # Bug caught: a generative run loaded as a classification adapter (a head it does not have).
  for run, kind in ((t5_run, 'seq2seq'), (lm_run, 'causal_lm')):
    with pytest.raises(ValueError, match=f'is a {kind} run .*--workdir='):
      load_adapter_server([str(run), str(run)])


@pytest.fixture(scope='module')
def minilm_tokenizer():
  return transformers.AutoTokenizer.from_pretrained(str(resolve_checkpoint_dir('minilm-l6')))


def test_prompts_are_tokenised_as_the_data_modules_tokenise_training_prompts(minilm_tokenizer):
  # Bugs caught: an MR not rendered (or rendered without ' ||'), a chat's assistant header left
  # out of the prompt, a JSON line taken as plain text, the placeholder completion leaking into
  # the prompt.
  def prompt_ids(record):
    return tokenize_record(record, minilm_tokenizer, max_length=64).prompt_ids.tolist()

  def trained(obj):  # how training reads the same example from a JSONL line
    return prompt_ids(parse_record(obj, 'train.jsonl:1'))

  e2e_record = e2e.evaluation_records([e2e.E2EItem(MRS[0], ('The Eagle serves French food.',))])[0]
  assert prompt_ids(prompt_record(MRS[0], 'e2e_nlg')) == prompt_ids(e2e_record)
  assert prompt_ids(prompt_record(MRS[0], 'e2e_nlg')) == minilm_tokenizer(
      E2E_PROMPTS[0], add_special_tokens=False)['input_ids']
  chat = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Sky colour?'}]
  assert prompt_ids(prompt_record(json.dumps({'messages': chat}), 'lm_jsonl')) == trained(
      {'messages': chat + [{'role': 'assistant', 'content': 'Blue.'}]})
  assert prompt_ids(prompt_record('the sky is red ||', 'lm_jsonl')) == trained(
      {'prompt': 'the sky is red ||', 'completion': ' it is red'})
  assert prompt_ids(prompt_record('{"prompt": "the sky is"}', 'lm_jsonl')) == trained(
      {'prompt': 'the sky is', 'completion': ' blue'})


@pytest.mark.parametrize('task, text, message', [
    ('e2e_nlg', 'name[Oops', r'Input 2: MR .* attribute\[value\]'),
    ('lm_jsonl', '{"prompt": 1', r'Input 2: starts with "\{" but is not valid JSON'),
    ('lm_jsonl', '{"messages": [{"role": "assistant", "content": "Hi"}]}',
     'Input 2: the chat ends with an assistant turn'),
    ('lm_jsonl', '{"text": "Hi"}', r'Input 2: a JSON input is \{"prompt"'),
])
def test_unreadable_prompts_name_the_input_and_the_fix(task, text, message):
  with pytest.raises(ValueError, match=message):
    prompt_record(text, task, where='Input 2: ')


@pytest.mark.parametrize('task, answer, label', [
    ('rotten_tomatoes', 'fresh', 'fresh'),
    ('rotten_tomatoes', 'rotten', 'rotten'),
    ('rte', 'not _ entailment', 'not_entailment'),  # a word-piece tokenizer's spacing
    ('stsb', '3. 8', 3.8),
    ('rotten_tomatoes', 'fresh rotten', None),
    ('stsb', 'high', None),
])
def test_t5_answers_map_back_to_labels_or_unparseable(task, answer, label):
  # Bugs caught: the class id output instead of its name, names indexed off by one, a score kept
  # as text, an answer naming no label given a label (or no `unparseable` flag).
  fields = answer_fields(get_task(task), answer)
  assert fields['generated'] == answer and fields['label'] == label
  assert fields.get('unparseable', False) is (label is None)
