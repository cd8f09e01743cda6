#!/usr/bin/env bash
# Accelerator check (see scripts/accelerator_check.py): BERT-large Houlsby bfloat16 throughput,
# MFU and peak device memory; a Llama-7B LoRA and QLoRA step (tokens/s, MFU, memory); then GLUE
# RTE end to end; JSON to the first argument.
#   bash scripts/accelerator_check.sh results.json [--glue_offline] [--peak_tflops=989]
# Stops after 8 minutes (what is measured by then is already in the JSON).
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: bash scripts/accelerator_check.sh OUT.json [accelerator_check.py options]" >&2
  exit 2
fi
out="$1"
shift
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
timeout 480 "$PYTHON" scripts/accelerator_check.py --out "$out" "$@"
