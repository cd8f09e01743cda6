#!/usr/bin/env bash
# Builds the virtual environment of the PyTorch anchors (scripts/anchor_torch.py): torch, AdapterHub
# `adapters`, `peft` and `bitsandbytes` (QLoRA's 4-bit base), at the versions the project's
# parity tests use (requirements-dev.txt).
#   bash scripts/setup_anchor.sh [VENV_DIR]     (default: .anchor-venv, where scripts/bench.py looks)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.anchor-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0 adapters==1.3.0 peft==0.21.2 bitsandbytes==0.50.2
echo "anchor environment ready: $venv/bin/python scripts/anchor_torch.py --help"
