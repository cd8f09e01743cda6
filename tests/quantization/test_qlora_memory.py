"""QLoRA's memory, lowered from abstract arrays by `scripts/memory_estimate.py` (as a user runs it):
a Llama-3-8B-shaped LoRA and QLoRA step with 8-way FSDP on 8 (forced host) devices, scan + remat,
bfloat16. The NF4 base is stored in <= 30% of the bfloat16 base's bytes and each device holds its
eighth; dequantising inside the step adds temporaries of at most each device's eighth of the
unscanned matrices (embedding and head) in bfloat16: never a dequantised copy of the scanned layers,
nor a whole dequantised table or head on a device (the lookup dequantises only its rows, the head
stays split as its codes are).

Measured here (2026-12-06, 2 loaded cores): about 100 s for both rows. Per device: LoRA arguments
2.05 GB, temp 8.67 GB; QLoRA arguments 0.57 GB, temp 8.74 GB (XLA:CPU's assignment, a GPU's
differs).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Llama-3 8B by hand: embeddings and untied head [128256, 4096]; per layer q/o [4096, 4096],
# k/v [4096, 1024] (8 KV heads), gate/up/down 4096 x 14336, two RMSNorm scales; the final norm.
HIDDEN, KV, FFN, VOCAB, LAYERS = 4096, 1024, 14336, 128256, 32
MATRICES = 2 * VOCAB * HIDDEN + LAYERS * (2 * HIDDEN**2 + 2 * HIDDEN * KV + 3 * HIDDEN * FFN)
NORMS = LAYERS * 2 * HIDDEN + HIDDEN
LORA_PARAMS = LAYERS * ((HIDDEN * 8 + 8 * HIDDEN) + (HIDDEN * 8 + 8 * KV))  # rank 8, query/value


@pytest.mark.slow
def test_nf4_llama_3_8b_base_takes_under_30_percent_of_bfloat16():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
         'PYTHONPATH': str(ROOT)}
  proc = subprocess.run(
      [sys.executable, 'scripts/memory_estimate.py', '--model', 'llama-3-8b', '--fake_devices',
       '8', '--sharding', 'fsdp', '--batch', '8', '--length', '2048', '--options', 'scan+remat',
       '--dtype', 'bfloat16', '--frozen_dtype', 'bfloat16', '--quantize', 'none,nf4'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lora, qlora = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
  assert (lora['quantize'], qlora['quantize']) == ('none', 'nf4')
  assert MATRICES + NORMS == 8_030_261_248  # the published Llama-3 8B count
  assert qlora['total_params'] == lora['total_params'] == MATRICES + NORMS + LORA_PARAMS
  # bfloat16 base: 2 bytes a value. NF4: every matrix half a byte a value plus a bfloat16 scale
  # per 64 values (every last dim here is a multiple of 64); the norms stay bfloat16.
  assert lora['frozen_bytes'] == 2 * (MATRICES + NORMS)
  assert qlora['frozen_bytes'] == MATRICES // 2 + MATRICES // 64 * 2 + 2 * NORMS
  assert qlora['frozen_bytes'] <= 0.30 * lora['frozen_bytes']
  # Per device: an eighth of the stored base, plus replicated float32 LoRA leaves and two moments.
  for row in (lora, qlora):
    expected = row['frozen_bytes'] / 8 + LORA_PARAMS * 4 * 3
    assert expected <= row['argument_bytes'] <= expected * 1.01, row
  # A dequantised copy of the 32 scanned layers would add their bfloat16 bytes over 8 devices
  # (1.75 GB); a whole dequantised head or table on a device 1.05 GB each; an eighth of both 0.26 GB.
  assert qlora['temp_bytes'] - lora['temp_bytes'] <= 2 * VOCAB * HIDDEN * 2 / 8, (lora, qlora)
