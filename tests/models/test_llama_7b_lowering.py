"""A Llama-7B LoRA train step lowers and compiles from abstract arrays on 8 (forced host) devices
with 8-way FSDP and a bfloat16 base, and XLA's per-device memory fits an 80 GB device.

Run through `scripts/memory_estimate.py`, as a user would. Nothing is materialised but the LoRA
leaves: the base params are `jax.ShapeDtypeStruct`s carrying their shardings. Measured here
(2026-11-29, 2 loaded cores): about 40 s; global batch 8 x length 2048, `scan_layers` + `remat`,
bfloat16 compute: arguments 1.73 GB, temp 7.2 GB, outputs 0.05 GB per device, 9.0 GB in all.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Llama-2 7B by hand: embeddings and untied head [32000, 4096]; per layer q/k/v/o [4096, 4096],
# gate/up/down 4096 x 11008, two RMSNorm scales; the final norm.
HIDDEN, FFN, VOCAB, LAYERS = 4096, 11008, 32000, 32
BASE_PARAMS = 2 * VOCAB * HIDDEN + LAYERS * (4 * HIDDEN**2 + 3 * HIDDEN * FFN + 2 * HIDDEN) + HIDDEN
LORA_PARAMS = LAYERS * 2 * (HIDDEN * 8 + 8 * HIDDEN)  # rank 8 on query and value
DEVICE_BYTES = 80e9


@pytest.mark.slow
def test_llama_7b_lora_step_fits_an_80gb_device_with_8_way_fsdp():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
         'PYTHONPATH': str(ROOT)}
  proc = subprocess.run(
      [sys.executable, 'scripts/memory_estimate.py', '--model', 'llama-7b', '--fake_devices', '8',
       '--sharding', 'fsdp', '--batch', '8', '--length', '2048', '--options', 'scan+remat',
       '--dtype', 'bfloat16', '--frozen_dtype', 'bfloat16'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  row = json.loads(proc.stdout.strip().splitlines()[-1])
  assert row['mesh'] == {'data': 8, 'model': 1}
  assert BASE_PARAMS == 6_738_415_616  # the published Llama-2 7B count
  assert row['total_params'] == BASE_PARAMS + LORA_PARAMS
  assert row['trainable_params'] == LORA_PARAMS
  # Per-device arguments: 1/8 of the bfloat16 base, plus a replicated float32 copy of the LoRA
  # params and their two AdamW moments (a replicated base would be 13.5 GB here).
  expected = BASE_PARAMS * 2 / 8 + LORA_PARAMS * 4 * 3
  assert expected <= row['argument_bytes'] <= expected * 1.01, row
  assert row['per_device_bytes'] < DEVICE_BYTES, row
  assert row['temp_bytes'] > 0
