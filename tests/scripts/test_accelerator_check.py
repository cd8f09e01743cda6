"""scripts/accelerator_check.sh in its `--tiny` form, as a user runs it (a subprocess, on CPU)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The bench's 'tiny' model: 2 layers, hidden 32, FFN 37; batch 2 x 16 tokens in --tiny.
LAYERS, HIDDEN, FFN, TOKENS = 2, 32, 37, 2 * 16


@pytest.mark.slow
def test_tiny_accelerator_check_writes_throughput_flops_and_glue_json(tmp_path):
  out = tmp_path / 'results' / 'check.json'
  env = {**os.environ, 'PYTHON': sys.executable, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(['bash', 'scripts/accelerator_check.sh', str(out), '--tiny',
                         '--peak_tflops=0.5'], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results['backend'] == 'cpu'
  training = results['training']
  assert training['model'] == 'tiny' and training['dtype'] == 'bfloat16'
  assert training['loss_finite'] and training['examples_per_s'] > 0
  assert training['examples_per_s'] == pytest.approx(2 / training['step_s_median'])
  # XLA's count of the step is at least the forward matmuls of the encoder layers
  # (2 FLOPs per weight per token) and less than 10x a full forward + backward of all params.
  forward_matmul = 2 * LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN) * TOKENS
  assert forward_matmul < training['flops_per_step'] < 10 * 6 * training['total_params'] * TOKENS
  peak = 0.5e12
  assert training['mfu'] == pytest.approx(
      training['flops_per_step'] / training['step_s_median'] / peak)
  assert training['mfu_6n'] == pytest.approx(
      6 * training['total_params'] * TOKENS / training['step_s_median'] / peak)
  assert training['device_memory'] is None  # CPU reports no device memory
  # Llama tiny (hidden 32, 2 layers, query 32 / key-value 16 wide, FFN 64, vocab 64), 2 x 16
  # tokens, scanned + remat: the step runs each layer's matmuls 3 times (forward, its recompute,
  # the input gradient) and the head's twice, all counted (XLA's own count of the scanned step
  # covers one layer: 2.9e6 < 3 x 1.3e6).
  llama_forward = 2 * TOKENS * (2 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64) + 32 * 64)
  for method in ('lora', 'qlora'):
    llama = results['llama'][method]
    assert llama['model'] == 'llama-tiny' and llama['method'] == method, llama
    assert llama['loss_finite'] and llama['trainable_params'] == 2 * (512 + 384)
    assert llama['tokens_per_s'] == pytest.approx(TOKENS / llama['step_s_median'])
    assert 3 * llama_forward < llama['flops_per_step'] < 10 * 6 * llama['total_params'] * TOKENS
    assert llama['mfu'] == pytest.approx(llama['flops_per_step'] / llama['step_s_median'] / peak)
    assert llama['step_buffers']['argument'] > 0 and llama['device_memory'] is None
  # NF4: 4 bits a value plus a bfloat16 scale per block (rows padded to whole blocks of 64).
  assert results['llama']['qlora']['stored_base_bytes'] < 0.5 * results['llama']['lora'][
      'stored_base_bytes']
  glue = results['glue']
  assert glue['task'] == 'rte' and glue['offline_files'] and glue['train_steps'] == 2
  # Evaluated on the 6 dev rows of the GLUE-layout RTE files: accuracy is a multiple of 1/6.
  correct = glue['validation_accuracy'] * 6
  assert correct == pytest.approx(round(correct), abs=1e-6)


@pytest.mark.slow
def test_usage_error_without_output_path():
  proc = subprocess.run(['bash', 'scripts/accelerator_check.sh'], cwd=ROOT, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and 'usage: bash scripts/accelerator_check.sh OUT.json' in proc.stderr
