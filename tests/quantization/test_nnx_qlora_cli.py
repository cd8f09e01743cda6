"""QLoRA on an `nnx:` model through the CLI: `experiments.train --config.model=nnx:...
--config.quantize=nf4` trains LoRA over the NF4 base, and `experiments.predict` answers as the
plain NNX model does on weights the test rounds to NF4 itself (float64), with the best leaves."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adapters_jax.checkpoint import save
from adapters_jax.methods import get_method
from adapters_jax.models.hf_files import load_tokenizer
from adapters_jax.models.registry import resolve_checkpoint_dir
from adapters_jax.nnx import checkpoint as nnx_checkpoint
from adapters_jax.nnx import splice
from adapters_jax.train.metrics_log import read_metrics
from tests.nnx.test_train_cli import ADAPTER, ENV, MODEL, ROOT, TRAINED
from tests.nnx.text_classifier import SITES, make_classifier
from tests.quantization.test_nnx_qlora import BLOCK, _reference, _write

# Stored as NF4 (written out from the model's layout): the embedding table and every projection;
# the head trains, biases and layer norms stay float.
QUANTIZED = {'embed/embedding'} | {f'layers/{i}/{p}/kernel' for i in (0, 1) for p in (
    'attn/query', 'attn/key', 'attn/value', 'attn/out', 'mlp/up', 'mlp/down')}


@pytest.mark.slow
def test_lora_over_an_nf4_nnx_base_trains_saves_the_adapter_and_predicts(tmp_path):
  # Bugs caught: the CLI refusing (or ignoring) quantize for an nnx: model; quantised leaves
  # trained or saved; a record fingerprinting the codes; predict serving the float base (its
  # probabilities would differ from the NF4 reference) or failing to restore onto a fresh one.
  workdir = tmp_path / 'run'
  run = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--config=experiments/configs/quickstart.py:smoke',
       f'--workdir={workdir}', f'--config.model={MODEL}', '--config.method=lora',
       f'--config.method_options.sites={SITES!r}', '--config.quantize=nf4',
       f'--config.quantize_block_size={BLOCK}', '--config.max_train_examples=32',
       '--config.learning_rate=0.03', '--config.warmup_ratio=0.0', '--config.num_train_steps=12',
       '--config.checkpoint_every_steps=12', '--config.eval_every_steps=12',
       '--config.log_every_steps=4', '--config.tensorboard=False'],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  losses = [r['loss'] for r in read_metrics(str(workdir), timings=False) if r['split'] == 'train']
  assert len(losses) == 3 and losses[2] < 0.8 * losses[0], losses  # one record per epoch

  best = save.load_leaves(workdir / 'best')
  assert set(best) == TRAINED and all(v.dtype == np.float32 for v in best.values())
  record = save.load_record(workdir / 'best')
  tokenizer = load_tokenizer(resolve_checkpoint_dir('minilm-l6'))
  fresh = make_classifier(vocab_size=len(tokenizer), num_labels=2, rngs=nnx.Rngs(0, dropout=0))
  base = nnx_checkpoint.base_params(fresh)
  assert record['base']['fingerprint'] == save.base_fingerprint(base)
  assert record['base']['weights_fingerprint'] == save.weights_fingerprint(
      base, skip=record['trained_paths'])
  assert record['base']['quantization']['kind'] == 'nf4'
  assert record['base']['quantization']['block_size'] == BLOCK
  result = json.loads((workdir / 'result.json').read_text())
  embedding = len(tokenizer) * 16
  assert result['total_params'] > embedding  # counted on the float kernels, not on the codes
  assert result['trainable_params'] == sum(int(np.prod(v.shape)) for v in best.values())

  texts = ['A triumph of a film.', 'Two hours I will never get back.']
  done = subprocess.run([sys.executable, '-m', 'experiments.predict', f'--workdir={workdir}'],
                        cwd=ROOT, env=ENV, input='\n'.join(texts) + '\n', capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  answers = [json.loads(line) for line in done.stdout.splitlines()]

  # Reference: the NNX model itself, LoRA spliced, the best leaves written in and every other
  # quantised weight rounded to NF4 blocks here.
  encoded = tokenizer(texts, padding=True, return_tensors='np')
  args = tuple(jnp.asarray(encoded[k]) for k in ('input_ids', 'attention_mask', 'token_type_ids'))
  splice.add_adapter(fresh, ADAPTER, get_method('lora', sites=SITES), jax.random.key(0), *args)
  flat_base = {'/'.join(str(k) for k in path): v[...]
               for path, v in nnx.to_flat_state(nnx.state(fresh, nnx.Param))}
  _write(fresh, best)
  splice.set_active(fresh, ADAPTER)
  fresh.eval()
  over_float = np.asarray(jax.nn.softmax(fresh(*args), axis=-1))  # [2, 2]
  _write(fresh, {p: _reference(flat_base[p]) for p in QUANTIZED})
  probabilities = np.asarray(jax.nn.softmax(fresh(*args), axis=-1))
  labels = ['rotten', 'fresh']
  got = np.asarray([[answer['probabilities'][n] for n in labels] for answer in answers])
  assert [answer['text'] for answer in answers] == texts
  np.testing.assert_allclose(got, probabilities, atol=1e-5)
  assert np.abs(got - over_float).max() > 1e-4  # the float base answers otherwise
