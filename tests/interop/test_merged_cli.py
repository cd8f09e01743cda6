"""`python -m experiments.export --format=merged` on a tiny PiSSA LoRA run (a random Llama trained
2 steps), as a user runs it: transformers' `AutoModelForCausalLM` and `AutoTokenizer` load the folder
and give our spliced model's logits; a second export into the same folder needs --overwrite."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from adapters_jax.models import resolve_checkpoint_dir
from adapters_jax.models.decoder_export import random_decoder_checkpoint
from adapters_jax.predict.runs import read_run
from adapters_jax.train import loop
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.members import load_best
from experiments.configs import mini_lora_lm
from experiments.make_random_decoder import TINY_LLAMA

ROOT = pathlib.Path(__file__).resolve().parents[2]


def export(workdir, out, *extra):
  args = [sys.executable, '-m', 'experiments.export', f'--workdir={workdir}', '--format=merged',
          f'--out={out}', *extra]
  return subprocess.run(args, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_merged_export_of_a_pissa_run_loads_in_transformers(tmp_path):
  model = random_decoder_checkpoint(tmp_path / 'llama', TINY_LLAMA, seed=0,
                                    tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  config = mini_lora_lm.get_config('smoke')
  config.model = str(model)
  config.data_dir = str(ROOT / 'experiments/data/mini_e2e')
  config.method_options = {'rank': 4, 'alpha': 32.0, 'init_weights': 'pissa'}
  config.learning_rate = 0.05  # two steps that move A and B visibly
  config.max_eval_examples = 8
  config.lm.max_new_tokens = 4
  loop.train_and_evaluate(config, str(tmp_path / 'run'))

  done = export(tmp_path / 'run', tmp_path / 'merged')
  assert done.returncode == 0, done.stderr[-3000:]
  assert {'config.json', 'model.safetensors', 'tokenizer.json'} <= {
      p.name for p in (tmp_path / 'merged').iterdir()}
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / 'merged')
  ids = np.asarray(tokenizer(['the cafe serves cheap food'])['input_ids'], np.int32)  # [1, seq]
  theirs_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'merged').eval()
  with torch.no_grad():
    theirs = theirs_model(torch.tensor(ids, dtype=torch.long)).logits.numpy()

  run = read_run(str(tmp_path / 'run'))
  experiment = build_experiment(run.config, run.spec)
  params = load_best(experiment, run.workdir)
  ours = np.asarray(experiment.forward(params, ids))  # the PiSSA adapter beside its residuals
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  base = np.asarray(experiment.spliced.apply(experiment.pretrained.params, ids))  # the original base
  assert np.abs(ours - base).max() > 1e-3  # training moved the model

  refused = export(tmp_path / 'run', tmp_path / 'merged')
  assert refused.returncode != 0 and '--overwrite' in refused.stderr
  assert export(tmp_path / 'run', tmp_path / 'merged', '--overwrite').returncode == 0
