"""A LoRA run on a tiny random Llama through `python -m experiments.train`, as a user runs it:
local JSONL (prompt/completion and chat records), packed rows, perplexity in result.json."""

import json
import os
import subprocess
import sys

import pytest

from adapters_jax.models import resolve_checkpoint_dir
from adapters_jax.models.decoder_export import random_decoder_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(model_type='llama', vocab_size=30522, hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, bos_token_id=101, eos_token_id=102, pad_token_id=0,
            initializer_range=0.18)
COLOURS = ('red', 'green', 'blue', 'white', 'black', 'yellow')


def _records(count, offset):
  records = []
  for i in range(offset, offset + count):
    colour = COLOURS[i % len(COLOURS)]
    if i % 3:
      records.append({'prompt': f'the sky is {colour} ||', 'completion': f' it is {colour} today'})
    else:
      records.append({'messages': [{'role': 'user', 'content': f'colour {colour}'},
                                   {'role': 'assistant', 'content': f'{colour} it is'}]})
  return records


def _write_jsonl(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))


@pytest.mark.slow
def test_lora_on_a_tiny_llama_trains_through_the_cli(tmp_path):
  # Bugs caught: the kind not chosen for a decoder, the prompt trained on, the LM head or the base
  # trained instead of LoRA alone, perplexity missing from the result, a loss that does not fall.
  model_dir = random_decoder_checkpoint(tmp_path / 'tiny_llama', TINY, seed=0,
                                        tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  _write_jsonl(data_dir / 'train.jsonl', _records(48, 0))
  _write_jsonl(data_dir / 'validation.jsonl', _records(12, 48))
  workdir = tmp_path / 'run'
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train',
       '--config=experiments/configs/mini_lora_lm.py:smoke', f'--workdir={workdir}',
       f'--config.model={model_dir}', '--config.task=lm_jsonl', f'--config.data_dir={data_dir}',
       '--config.lm.pack=True', '--config.lm.label_smoothing=0.0', '--config.max_length=32',
       '--config.num_train_steps=10', '--config.eval_every_steps=10',
       '--config.checkpoint_every_steps=10', '--config.learning_rate=0.02',
       '--config.warmup_ratio=0.0'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads((workdir / 'result.json').read_text())
  validation = result['validation_metrics']['validation']
  assert validation['perplexity'] > 1.0
  assert abs(validation['log_likelihood'] + validation['loss']) < 1e-9
  # LoRA r=4 on query (32 -> 32) and value (32 -> 16, two 8-wide key/value heads), 2 layers:
  # 2 * ((32 * 4 + 4 * 32) + (32 * 4 + 4 * 16)) = 896; nothing else trains.
  assert result['trainable_params'] == 896
  with open(workdir / 'metrics.jsonl') as f:
    losses = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
  assert len(losses) == 10
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
