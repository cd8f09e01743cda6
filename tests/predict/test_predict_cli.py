"""Prediction from a workdir, checked against restoring the adapter onto a fresh base by hand."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import models
from adapters_jax.checkpoint import restore
from adapters_jax.predict.predictor import load_predictor
from adapters_jax.train import loop
from tests.train.test_loop import ROOT, smoke_config

TEXTS = ['A triumph of acting and heart.', 'A dull, lifeless mess.', 'It is a movie.']


@pytest.mark.slow
def test_predictor_matches_manual_restore_and_cli(tiny_bert_dir, tmp_path):
  loop.train_and_evaluate(smoke_config(tiny_bert_dir), str(tmp_path))
  predictor = load_predictor(str(tmp_path))
  predictions = predictor.predict(TEXTS)
  assert [sorted(p['probabilities']) for p in predictions] == [['fresh', 'rotten']] * 3

  # Independent path: load the base, restore the adapter checkpoint, run the spliced model.
  base = models.load_pretrained(tiny_bert_dir, head='classification', num_labels=2)
  tokens = base.tokenizer(TEXTS, padding=True, return_tensors='np')
  ids = jnp.asarray(tokens['input_ids'])
  mask = jnp.asarray(tokens['attention_mask'])
  types = jnp.asarray(tokens['token_type_ids'])
  spliced, params = restore.restore_adapter(tmp_path / 'best', base.model, base.params, ids, mask,
                                               types, deterministic=True)
  logits = spliced.apply(params, ids, mask, types, active='rotten_tomatoes', deterministic=True)
  probabilities = np.asarray(jax.nn.softmax(logits, -1))
  for p, row in zip(predictions, probabilities, strict=True):
    np.testing.assert_allclose([p['probabilities']['rotten'], p['probabilities']['fresh']], row,
                               rtol=1e-4, atol=1e-5)

  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  proc = subprocess.run([sys.executable, '-m', 'experiments.predict', f'--workdir={tmp_path}'],
                        input='\n'.join(TEXTS) + '\n', cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert [line['text'] for line in lines] == TEXTS
  assert [line['label'] for line in lines] == [p['label'] for p in predictions]
