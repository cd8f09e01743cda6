"""Shared test setup: keep XLA on the CPU and quiet, and give tests the tiny model."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
