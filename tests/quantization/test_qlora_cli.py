"""QLoRA through the CLI: LoRA on a tiny random Llama whose frozen kernels are NF4, trained with
`python -m experiments.train`, restored onto a freshly quantised base by `experiments.predict`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from adapters_jax.checkpoint import save
from adapters_jax.models import resolve_checkpoint_dir
from adapters_jax.models.decoder_export import random_decoder_checkpoint
from adapters_jax.models.pretrained import load_pretrained
from tests.train.test_causal_lm_cli import TINY, _records, _write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_lora_on_an_nf4_llama_trains_saves_adapters_only_and_predicts(tmp_path):
  # Bugs caught: the quantised kernels trained or saved, the step fed codes instead of dequantised
  # kernels (no learning), the record fingerprinting the quantised tree instead of the float base,
  # predict failing on (or not quantising) the base it restores onto.
  model_dir = random_decoder_checkpoint(tmp_path / 'tiny_llama', TINY, seed=0,
                                        tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  _write_jsonl(data_dir / 'train.jsonl', _records(48, 0))
  _write_jsonl(data_dir / 'validation.jsonl', _records(12, 48))
  workdir = tmp_path / 'run'
  env = {**os.environ, 'PYTHONPATH': ROOT, 'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train',
       '--config=experiments/configs/mini_lora_lm.py:smoke', f'--workdir={workdir}',
       f'--config.model={model_dir}', '--config.task=lm_jsonl', f'--config.data_dir={data_dir}',
       '--config.quantize=nf4', '--config.quantize_block_size=16',
       '--config.lm.pack=True', '--config.lm.label_smoothing=0.0', '--config.max_length=32',
       '--config.num_train_steps=10', '--config.eval_every_steps=10',
       '--config.checkpoint_every_steps=10', '--config.learning_rate=0.02',
       '--config.warmup_ratio=0.0'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads((workdir / 'result.json').read_text())
  assert result['trainable_params'] == 896  # LoRA r=4 on query/value, as the float run
  assert result['total_params'] > 30522 * 32  # counted on the float kernels, not on the codes
  with open(workdir / 'metrics.jsonl') as f:
    losses = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
  assert len(losses) == 10
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses

  best = workdir / 'best'
  leaves = save.load_leaves(best)
  assert leaves and all('/adapters/' in path for path in leaves), sorted(leaves)
  assert all(np.asarray(v).dtype == np.float32 for v in leaves.values())
  record = save.load_record(best)
  base = load_pretrained(str(model_dir), load_tokenizer=False).params
  trained = record['trained_paths']
  assert record['base']['fingerprint'] == save.base_fingerprint(base)
  assert record['base']['weights_fingerprint'] == save.weights_fingerprint(base, skip=trained)
  assert record['base']['quantization']['kind'] == 'nf4'
  assert record['base']['quantization']['block_size'] == 16

  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('the sky is red ||\nthe sky is blue ||\n')
  predict = subprocess.run(
      [sys.executable, '-m', 'experiments.predict', f'--workdir={workdir}',
       f'--input={prompts}', '--max_new_tokens=4'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert predict.returncode == 0, predict.stderr[-3000:]
  rows = [json.loads(line) for line in predict.stdout.splitlines() if line.strip()]
  assert len(rows) == 2, predict.stdout
