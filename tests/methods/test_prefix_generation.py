"""Prefix tuning in cached decoding: the cache holds the real tokens, the prefix stays in front of it
at every step, so cached greedy decoding equals the uncached forward token for token (Llama with
RoPE and GQA, GPT-2) and T5's cached steps (prefixes in encoder, decoder and cross-attention; with
positions='after_prefix' too) give the teacher-forcing logits and the uncached greedy tokens.
Adapter-only checkpoints restore; a run trains through the CLI."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import adapter_leaves, add_adapter, get_method, restore_adapter, save_adapter
from adapters_jax.models import (
  DecoderLM,
  GenerationConfig,
  T5Config,
  T5ForConditionalGeneration,
  generate,
  init_decode_cache,
  resolve_checkpoint_dir,
)
from adapters_jax.models.decoder_export import random_decoder_checkpoint
from adapters_jax.models.t5_decoding import greedy_generate
from adapters_jax.predict.predictor import load_predictor
from tests.models import decoder_checkpoints as dc
from tests.models.tiny_decoders import TINY_DECODERS
from tests.train import test_causal_lm_cli as cli


def _decoder(family, positions='none'):
  model = DecoderLM(TINY_DECODERS[family])
  ids, mask = dc.left_padded([7, 4], 7, model.config.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  spliced, params = add_adapter(model, params, 'a', get_method('prefix_tuning', prefix_length=4,
                                                               bottleneck_size=16,
                                                               positions=positions),
                                jax.random.key(1), ids, mask)
  return spliced, params, ids, mask


@pytest.mark.parametrize('positions', ['none', 'after_prefix'])
@pytest.mark.parametrize('family', sorted(TINY_DECODERS))
def test_cached_greedy_with_a_prefix_equals_the_uncached_forward(family, positions):
  spliced, params, ids, mask = _decoder(family, positions)
  config = GenerationConfig(max_new_tokens=5)
  tokens = np.asarray(generate(spliced, params, ids, mask, config, active='a').tokens)
  assert not np.array_equal(tokens, np.asarray(generate(spliced, params, ids, mask, config).tokens))
  # Reference: no cache, the whole sequence recomputed every step (laid out at its final length,
  # future slots masked on the right).
  steps, prompt = config.max_new_tokens, ids.shape[1]
  seq = np.concatenate([ids, np.zeros((2, steps), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((2, steps), np.int32)], axis=1)
  forward = jax.jit(lambda s, m: spliced.apply(params, s, m, active='a'))
  for step in range(steps):
    token = np.asarray(jnp.argmax(forward(seq, seq_mask)[:, prompt + step - 1], axis=-1))
    np.testing.assert_array_equal(token, tokens[:, step], err_msg=f'step {step}')
    seq[:, prompt + step], seq_mask[:, prompt + step] = token, 1


T5 = T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
              num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              dropout_rate=0.0, feed_forward_proj='gated-gelu', tie_word_embeddings=False)


def _t5(positions, **locations):
  model = T5ForConditionalGeneration(T5)
  ids = np.random.default_rng(0).integers(2, 99, (2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  decoder_ids = np.random.default_rng(1).integers(2, 99, (2, 5)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask, decoder_ids)['params']
  spliced, params = add_adapter(model, params, 'a', get_method('prefix_tuning', prefix_length=3,
                                                               bottleneck_size=8,
                                                               positions=positions, **locations),
                                jax.random.key(1), ids, mask, decoder_ids)
  return spliced, params, ids, mask, decoder_ids


@pytest.mark.parametrize('positions', ['none', 'after_prefix'])
def test_t5_cached_steps_with_prefixes_give_the_teacher_forcing_logits(positions):
  # after_prefix: the cached steps must give the prefix keys positions 0..P-1 and the step's query
  # P + t, as the full forward does (a bias left unshifted, or shifted in one path only, fails).
  spliced, params, ids, mask, decoder_ids = _t5(positions)
  apply = functools.partial(spliced.apply, active='a')
  encoder_hidden = apply(params, ids, mask, method='encode')
  cache = init_decode_cache(T5, 2, decoder_ids.shape[1])
  step = jax.jit(lambda tok, pos, c: apply(params, tok, pos, c, encoder_hidden, mask,
                                           method='decode_step'))
  logits = []
  for t in range(decoder_ids.shape[1]):
    out, cache = step(decoder_ids[:, t:t + 1], t, cache)
    logits.append(out[:, 0])
  full = np.asarray(apply(params, ids, mask, decoder_ids))
  np.testing.assert_allclose(np.stack(logits, axis=1), full, rtol=1e-4, atol=1e-4)
  assert np.abs(full - np.asarray(spliced.apply(params, ids, mask, decoder_ids))).max() > 1e-2


@pytest.mark.parametrize('locations', [{}, dict(encoder_prefix=False, cross_prefix=False)])
def test_t5_cached_greedy_with_a_shifted_prefix_equals_the_uncached_forward(locations):
  spliced, params, ids, mask, _ = _t5('after_prefix', **locations)
  steps = 5
  apply = functools.partial(spliced.apply, active='a')
  tokens = np.asarray(greedy_generate(apply, T5, params, ids, mask, steps))
  decoder = np.zeros((2, 1), np.int32)  # the start token; the whole input recomputed each step
  forward = jax.jit(lambda d: apply(params, ids, mask, d))
  for step in range(steps):
    token = np.asarray(jnp.argmax(forward(decoder)[:, -1], axis=-1)).astype(np.int32)
    np.testing.assert_array_equal(token, tokens[:, step], err_msg=f'step {step}')
    decoder = np.concatenate([decoder, token[:, None]], axis=1)


def test_adapter_only_checkpoint_restores_the_prefix(tmp_path):
  model = DecoderLM(TINY_DECODERS['llama'])
  ids, mask = dc.left_padded([7, 4], 7, model.config.vocab_size)
  base = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  method = get_method('prefix_tuning', prefix_length=4, bottleneck_size=16)
  spliced, params = add_adapter(model, base, 'a', method, jax.random.key(1), ids, mask)
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'a', base_name='tiny')
  restored_spliced, restored = restore_adapter(path, model, base, ids, mask)
  assert restored_spliced.adapter('a').method == method
  want, got = adapter_leaves(params, 'a'), adapter_leaves(restored, 'a')
  assert got.keys() == want.keys() and any('/shared/' in p for p in got)
  for leaf, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[leaf]), np.asarray(value))


@pytest.mark.slow
def test_prefix_tuning_on_a_tiny_llama_trains_through_the_cli(tmp_path):
  # Bugs caught: the preset unknown to the CLI, the shared MLP or the per-layer params left out of
  # the trained partition (or the base trained instead), a loss that does not fall.
  model_dir = random_decoder_checkpoint(tmp_path / 'tiny_llama', cli.TINY, seed=0,
                                        tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  cli._write_jsonl(data_dir / 'train.jsonl', cli._records(48, 0))
  cli._write_jsonl(data_dir / 'validation.jsonl', cli._records(12, 48))
  workdir = tmp_path / 'run'
  # The LoRA LM config with its method swapped (its method_options are LoRA's).
  config_file = tmp_path / 'prefix_lm.py'
  config_file.write_text(
      'from experiments.configs import mini_lora_lm\n\n\n'
      'def get_config(arg=None):\n'
      '  config = mini_lora_lm.get_config(arg)\n'
      "  config.method = 'prefix_tuning'\n"
      "  config.method_options = {'prefix_length': 4, 'bottleneck_size': 16}\n"
      '  return config\n')
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train', f'--config={config_file}:smoke',
       f'--workdir={workdir}', f'--config.model={model_dir}', '--config.task=lm_jsonl',
       f'--config.data_dir={data_dir}',
       '--config.lm.pack=True', '--config.lm.label_smoothing=0.0', '--config.max_length=32',
       '--config.num_train_steps=10', '--config.eval_every_steps=10',
       '--config.checkpoint_every_steps=10', '--config.learning_rate=0.02',
       '--config.warmup_ratio=0.0'],
      cwd=cli.ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': cli.ROOT})
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads((workdir / 'result.json').read_text())
  # Shared (self_prefix): embedding 4 x 16 (2 kv heads x 8) + hidden 16 x 16 + 16; per layer the
  # output Linear 16 x 32 + 32 (keys and values); 2 layers. Nothing else trains.
  assert result['trainable_params'] == 4 * 16 + 16 * 16 + 16 + 2 * (16 * 32 + 32)
  with open(workdir / 'metrics.jsonl') as f:
    losses = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
  assert len(losses) == 10
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
  # Prediction from the run's best checkpoint: the prefix adapter spliced and generating.
  predictor = load_predictor(str(workdir), max_new_tokens=4)
  assert [spec.method.kind for spec in predictor.experiment.spliced.adapters] == ['prefix_tuning']
  predictions = predictor.predict(['the sky is red ||', 'colour blue'])
  assert len(predictions) == 2 and all(isinstance(p['generated'], str) for p in predictions)
