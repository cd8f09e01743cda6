"""Every preset splices into our BERT (plain and scanned layers) with its default site patterns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters_jax import adapter_leaves, add_adapter, get_method, models
from adapters_jax.splicing import trainable

CONFIG = models.EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                              intermediate_size=64, max_position_embeddings=32)
EXPECTED_SITES = {  # per layer
    'houlsby': ['attention/output', 'ffn/output'],
    'pfeiffer': ['ffn/output'],
    'parallel': ['ffn'],
    'lora': ['attention/query', 'attention/value'],
    'ia3': ['attention/key', 'attention/value', 'ffn/output'],
    'compacter': ['attention/output', 'ffn/output'],
    'compacter++': ['ffn/output'],
}


def _inputs():
  ids = jax.random.randint(jax.random.key(0), (2, 9), 1, 64)
  mask = jnp.ones_like(ids).at[1, 5:].set(0)
  return ids, mask


@pytest.mark.parametrize('scan', [False, True], ids=['plain', 'scan'])
@pytest.mark.parametrize('preset', sorted(EXPECTED_SITES))
def test_preset_splices_into_our_bert(preset, scan):
  model = models.classification_model(CONFIG.replace(scan_layers=scan), num_labels=3)
  ids, mask = _inputs()
  params = model.init(jax.random.key(0), ids, mask)['params']
  overrides = {'size': 8} if preset in ('compacter', 'compacter++', 'houlsby') else {}
  if preset == 'houlsby':
    overrides['init'] = 'zero'  # exact equality below
  spliced, new_params = add_adapter(model, params, 'a', get_method(preset, **overrides),
                                    jax.random.key(1), ids, mask)
  sites = [s.path for s in spliced.adapter('a').sites]
  if scan:
    want = [f'encoder/layers/{s}' for s in EXPECTED_SITES[preset]]
  else:
    want = [f'encoder/layer_{i}/{s}' for i in range(2) for s in EXPECTED_SITES[preset]]
  assert sites == want
  base = np.asarray(model.apply({'params': params}, ids, mask))
  out = np.asarray(spliced.apply(new_params, ids, mask, active='a'))
  if scan:
    # nn.scan compiles the layer body as one XLA computation; the extra (zero) adapter ops can
    # change its fusion, so equality holds to float rounding rather than bit for bit.
    np.testing.assert_allclose(out, base, rtol=1e-5, atol=1e-7)
  else:
    np.testing.assert_array_equal(out, base)
  n = trainable.count_params(adapter_leaves(new_params, 'a'))
  assert 0 < n < trainable.count_params(params)


def test_houlsby_trains_our_layer_norms_and_head():
  model = models.classification_model(CONFIG, num_labels=2)
  ids, mask = _inputs()
  params = model.init(jax.random.key(0), ids, mask)['params']
  spliced, params = add_adapter(model, params, 'a', get_method('houlsby', size=8),
                                jax.random.key(1), ids, mask)
  mask_tree = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('a')]))
  trained = [p for p in trainable.leaf_paths(trainable.split(params, mask_tree)[0])]
  assert 'embeddings/layer_norm/scale' in trained
  assert 'encoder/layer_1/ffn_layer_norm/bias' in trained
  assert 'classifier/dense/kernel' in trained
  assert not any(p.startswith('pooler/') for p in trained)
  assert not any(p.endswith('attention/query/kernel') for p in trained)
