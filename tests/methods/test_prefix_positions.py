"""Prefix tuning with positions='after_prefix' under compositions: a Stack moves the real tokens
after every prefix (the sum of their lengths, as one prefix of the concatenated vectors), and
PerExample moves each row by its own prefix's length (each row as its adapter alone)."""

import jax
import numpy as np
from flax import traverse_util

from adapters_jax import add_adapter, get_method
from adapters_jax.models import DecoderLM
from adapters_jax.splicing.composition import PerExample, Stack
from tests.models import decoder_checkpoints as dc
from tests.models.tiny_decoders import TINY_DECODERS


def _three_prefixes():
  """GPT-2 (learned positions) with shifted flat prefixes a (P=2), b (P=3) and c (P=5) = b's then
  a's vectors: the layout a Stack('a', 'b') attends over."""
  model = DecoderLM(TINY_DECODERS['gpt2'])
  ids, mask = dc.left_padded([7, 4], 7, model.config.vocab_size)
  params = jax.jit(model.init)(jax.random.key(0), ids, mask)['params']
  spliced = model
  for seed, (name, length) in enumerate((('a', 2), ('b', 3), ('c', 5))):
    spliced, params = add_adapter(spliced, params, name, get_method(
        'prefix_tuning_flat', prefix_length=length, positions='after_prefix'), jax.random.key(seed + 1),
        ids, mask)
  flat = traverse_util.flatten_dict(params, sep='/')
  for layer in range(model.config.num_layers):
    site = f'decoder/layer_{layer}/attention/prefix/adapters'
    flat[f'{site}/c/prefixes'] = np.concatenate([flat[f'{site}/b/prefixes'], flat[f'{site}/a/prefixes']])
  return spliced, traverse_util.unflatten_dict(flat, sep='/'), ids, mask


def test_stack_shifts_by_every_prefix_and_per_example_by_its_own():
  spliced, params, ids, mask = _three_prefixes()
  run = lambda active, **kw: np.asarray(spliced.apply(params, ids, mask, active=active, **kw))
  real = mask == 1
  np.testing.assert_allclose(run(Stack('a', 'b'))[real], run('c')[real], atol=1e-5, rtol=0)
  alone = [run('a'), run('b')]
  rows = run(PerExample('a', 'b'), adapter_index=np.array([0, 1]))
  for row in range(2):
    np.testing.assert_allclose(rows[row][real[row]], alone[row][row][real[row]], atol=1e-5, rtol=0)
  assert np.abs(alone[0] - alone[1])[real].max() > 1e-2
