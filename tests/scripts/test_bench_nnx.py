"""scripts/bench_nnx.py steps the same model twice: the Linen BERT and its NNX twin (through
`nnx.functional.Functional`) take identical train steps when no dropout draws differ."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax.models import EncoderConfig
from adapters_jax.train import optimizer

_PATH = pathlib.Path(__file__).resolve().parents[2] / 'scripts' / 'bench_nnx.py'
_SPEC = importlib.util.spec_from_file_location('bench_nnx_script', _PATH)
bench_nnx = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_nnx)


@pytest.mark.slow
def test_the_linen_and_nnx_steps_give_the_same_loss_and_update():
  # Bug caught: a twin that is not the same model (the timing ratio would compare two models), or
  # an NNX step that updates other leaves than the Linen one.
  cfg = EncoderConfig(**bench_nnx.DIMS['tiny'], hidden_dropout=0.0, attention_dropout=0.0)
  ids = jax.random.randint(jax.random.key(2), (2, 8), 1, cfg.vocab_size)
  batch = (ids, jnp.ones_like(ids).at[1, 5:].set(0), jnp.zeros_like(ids), jnp.asarray([0, 1]))
  tx = optimizer.adamw(1e-2, weight_decay=0.01, clip_norm=1.0)
  (linen, linen_state, linen_frozen), params, linen_logits = bench_nnx.linen_step(cfg, batch, tx)
  (nnx_train, nnx_state, nnx_frozen), nnx_logits = bench_nnx.nnx_step(cfg, batch, tx, params)
  np.testing.assert_allclose(nnx_logits, linen_logits, atol=1e-5)
  linen_state, linen_metrics = linen(linen_state, linen_frozen, batch)
  nnx_state, nnx_metrics = nnx_train(nnx_state, nnx_frozen, batch)
  np.testing.assert_allclose(nnx_metrics['loss'], linen_metrics['loss'], rtol=1e-5)
  assert jax.tree.structure(nnx_state.params) == jax.tree.structure(linen_state.params)
  for a, b in zip(jax.tree.leaves(nnx_state.params), jax.tree.leaves(linen_state.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
