"""Adapter modules against float64 NumPy references, presets, and option errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from adapters_jax import methods
from adapters_jax.methods.base import SiteInfo

jax.config.update('jax_enable_x64', False)


def _gelu64(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _params64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


@pytest.mark.parametrize('activation', ['gelu', 'relu', 'tanh', 'swish'])
def test_bottleneck_matches_float64_formula(activation):
  module = methods.Bottleneck(features=8, bottleneck=3, activation=activation, scaling=0.5,
                              layer_norm_before=False, init_scheme='houlsby')
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = module.init(jax.random.key(1), x)['params']
  # Give the up-projection weight so the test is not trivially the identity.
  params = jax.tree.map(lambda a: a + 0.3, params)
  got = module.apply({'params': params}, x)
  p = _params64(params)
  x64 = np.asarray(x, np.float64)
  act = {'gelu': _gelu64, 'relu': lambda v: np.maximum(v, 0), 'tanh': np.tanh,
         'swish': lambda v: v / (1 + np.exp(-v))}[activation]
  h = act(x64 @ p['down']['kernel'] + p['down']['bias'])
  want = x64 + 0.5 * (h @ p['up']['kernel'] + p['up']['bias'])
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_bottleneck_zero_init_is_identity_and_houlsby_is_near():
  x = jax.random.normal(jax.random.key(0), (4, 8))
  zero = methods.Bottleneck(features=8, bottleneck=4, init_scheme='zero')
  out = zero.apply(zero.init(jax.random.key(1), x), x)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
  near = methods.Bottleneck(features=8, bottleneck=4, init_scheme='houlsby')
  params = near.init(jax.random.key(1), x)['params']
  assert float(jnp.std(params['up']['kernel'])) < 2e-2
  out = near.apply({'params': params}, x)
  assert 0 < float(jnp.max(jnp.abs(out - x))) < 1e-2


def test_lora_matches_float64_formula():
  module = methods.LoRA(out_features=6, rank=2, alpha=4.0)
  x = jax.random.normal(jax.random.key(0), (3, 5))
  params = module.init(jax.random.key(1), x)['params']
  np.testing.assert_array_equal(np.asarray(params['lora_b']), 0)
  bound = 1 / np.sqrt(5)
  assert np.all(np.abs(np.asarray(params['lora_a'])) <= bound + 1e-6)
  params = {**params, 'lora_b': jax.random.normal(jax.random.key(2), (2, 6))}
  p = _params64(params)
  want = (np.asarray(x, np.float64) @ p['lora_a'] @ p['lora_b']) * (4.0 / 2)
  np.testing.assert_allclose(np.asarray(module.apply({'params': params}, x)), want, rtol=1e-5,
                             atol=1e-6)


def test_kron_sum_matches_numpy_kron():
  rule = np.random.default_rng(0).normal(size=(4, 4, 4))
  factors = np.random.default_rng(1).normal(size=(4, 3, 5))
  want = sum(np.kron(rule[i], factors[i]) for i in range(4))
  got = methods.kron_sum(jnp.asarray(rule, jnp.float32), jnp.asarray(factors, jnp.float32))
  assert got.shape == (12, 20)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_phm_dense_parameter_count_is_exact():
  d, m, n = 32, 8, 4
  layer = methods.PHMDense(features=m, n=n, rank=1)
  rule = jnp.ones((n, n, n))
  params = layer.init(jax.random.key(0), jnp.zeros((1, d)), rule)['params']
  sizes = {k: v.size for k, v in params.items()}
  # s: n * (d / n) * 1 = d, t: n * 1 * (m / n) = m, bias: m.
  assert sizes == {'s': d, 't': m, 'bias': m}


def test_compacter_site_module_starts_as_identity():
  cfg = methods.get_method('compacter', size=8)
  site = SiteInfo(path='x', placement='output', in_features=32, out_features=32)
  module = cfg.make_module(site)
  shared = cfg.make_shared_module().init(jax.random.key(0))['params']
  x = jax.random.normal(jax.random.key(1), (2, 32))
  params = module.init(jax.random.key(2), x, shared=shared)
  np.testing.assert_array_equal(np.asarray(module.apply(params, x, shared=shared)), np.asarray(x))


def test_compacter_bottleneck_is_width_over_reduction_factor_unless_a_size_is_given():
  # The paper's rule: m = d / reduction_factor (BERT-base, d = 768, factor 32: m = 24).
  compacter = methods.get_method('compacter')
  assert compacter.size is None and compacter.reduction_factor == 32
  assert compacter.bottleneck_size(768) == 24
  assert methods.get_method('compacter', reduction_factor=16).bottleneck_size(768) == 48
  assert methods.get_method('compacter', size=8).bottleneck_size(768) == 8
  assert compacter.bottleneck_size(16) == 1  # never an empty bottleneck


def test_fusion_value_kernel_init_is_the_identity_plus_noise_in_the_dtype_asked():
  # Bug caught: the identity or the noise made in float32 whatever the params' dtype.
  from adapters_jax.methods.fusion import identity_plus_noise

  init = identity_plus_noise(1e-2)
  for dtype in (jnp.float32, jnp.bfloat16):
    kernel = init(jax.random.key(0), (4, 4), dtype)
    assert kernel.dtype == dtype
    np.testing.assert_allclose(np.asarray(kernel, np.float64), np.eye(4), atol=0.06)
    assert np.abs(np.asarray(kernel, np.float64) - np.eye(4)).max() > 1e-4
  with pytest.raises(ValueError, match=r'must be square, got shape \(4, 3\)'):
    init(jax.random.key(0), (4, 3))


def test_averaging_refuses_a_weight_count_other_than_the_adapter_count():
  # Bug caught: zip truncating to the shorter list, silently dropping an adapter from the average.
  lora = methods.get_method('lora', rank=2)
  site = {'lora_a': jnp.ones((4, 2)), 'lora_b': jnp.ones((2, 4))}
  for how in ('exact', 'linear'):
    with pytest.raises(ValueError, match='zip'):
      lora.average([lora, lora], [site, site], [1.0], how)
  with pytest.raises(ValueError, match='zip'):
    methods.get_method('ia3').average([methods.get_method('ia3')] * 2, [{'scale': jnp.ones(4)}] * 2,
                                      [0.5], 'exact')


def test_ia3_scales_elementwise():
  module = methods.IA3(features=4)
  x = jnp.arange(8.0).reshape(2, 4)
  params = {'params': {'scale': jnp.array([1.0, 2.0, 0.5, -1.0])}}
  np.testing.assert_allclose(np.asarray(module.apply(params, x)),
                             np.arange(8.0).reshape(2, 4) * [1, 2, 0.5, -1])


def test_presets_and_errors_list_valid_choices():
  assert set(methods.PRESETS) == {'houlsby', 'double_seq_bn', 'pfeiffer', 'parallel', 'lora', 'vera',
                                  'dora', 'ia3', 'compacter', 'compacter++', 'phm_adapter',
                                  'prefix_tuning', 'prefix_tuning_flat', 'prompt_tuning', 'mam',
                                  'unipelt'}
  assert methods.get_method('houlsby', size=8).size == 8
  with pytest.raises(ValueError, match="valid presets: .*'houlsby'"):
    methods.get_method('housby')
  with pytest.raises(ValueError, match="valid options: .*'size'"):
    methods.get_method('houlsby', sise=8)
  with pytest.raises(ValueError, match='valid activations'):
    methods.get_method('houlsby', activation='gelux')
  with pytest.raises(ValueError, match='valid placements'):
    methods.get_method('lora', sites=(('.*/query', 'sideways'),))


def test_method_config_roundtrips_through_json_dict():
  import json
  for name in methods.PRESETS:
    cfg = methods.get_method(name)
    again = methods.method_from_dict(json.loads(cfg.to_json()))
    assert again == cfg, name


def test_adapter_drop_leaves_out_layers_and_narrows_train_also():
  import re
  houlsby = methods.get_method('houlsby')
  dropped = methods.adapter_drop(houlsby, [1, 0])
  assert dropped.leave_out == (0, 1)
  assert methods.adapter_drop(houlsby, []) == houlsby
  (pattern,) = dropped.train_also
  # Written out by hand: Houlsby trains every layer norm; with layers 0 and 1 dropped only the
  # layer norms of layers 2, 3, ... train (layer 10 too: indices are whole numbers), never the
  # embeddings' layer norm, nor a kernel, in either path layout (ours: layer_<i>/, HF: layer/<i>/).
  expected = {
      'encoder/layer_0/attention_layer_norm/scale': False,
      'encoder/layer_1/ffn_layer_norm/bias': False,
      'embeddings/layer_norm/scale': False,
      'encoder/layer_2/ffn_layer_norm/bias': True,
      'encoder/layer_10/attention_layer_norm/scale': True,
      'encoder/layer_11/ffn_layer_norm/scale': True,
      'encoder/layer_3/ffn/output/kernel': False,
      'encoder/layer/1/output/LayerNorm/scale': False,
      'encoder/layer/0/attention/output/LayerNorm/bias': False,
      'encoder/layer/2/output/LayerNorm/scale': True,
      'encoder/layer/12/output/LayerNorm/scale': True,
      'bert/encoder/layer/3/attention/output/LayerNorm/bias': True,
  }
  got = {path: re.fullmatch(pattern, path) is not None for path in expected}
  assert got == expected
  # The result round-trips like any method config (it is recorded beside checkpoints).
  assert methods.method_from_dict(dropped.to_dict()) == dropped


def test_option_values_of_the_wrong_type_name_option_value_and_type():
  with pytest.raises(ValueError, match=r"size='big' of BottleneckConfig is a str; size takes int \| None"):
    methods.get_method('houlsby', size='big')
  with pytest.raises(ValueError, match=r'rank=2.5 of LoRAConfig is a float; rank takes int'):
    methods.get_method('lora', rank=2.5)
  with pytest.raises(ValueError, match=r'layer_norm_before=1 .* takes bool'):
    methods.get_method('houlsby', layer_norm_before=1)
  with pytest.raises(ValueError, match=r'leave_out=\[0, .a.\] .* takes tuple\[int, \.\.\.\]'):
    methods.get_method('pfeiffer', leave_out=[0, 'a'])
  with pytest.raises(ValueError, match=r"sites=\('\.\*/query',\) .* takes tuple\[tuple\[str, str\]"):
    methods.get_method('lora', sites=('.*/query',))
  # As JSON gives them: ints for float fields, lists for tuple fields.
  config = methods.get_method('lora', alpha=4, sites=[['.*/query', 'parallel']], leave_out=[1])
  assert config.alpha == 4 and config.sites == (('.*/query', 'parallel'),)
  assert config.leave_out == (1,)
  assert methods.get_method('houlsby', size=None, reduction_factor=8).bottleneck_size(64) == 8


@pytest.mark.parametrize('preset, config_class', [('houlsby', 'BottleneckConfig'),
                                                  ('compacter', 'CompacterConfig')])
def test_methods_that_cannot_merge_say_which_and_name_the_ones_that_can(preset, config_class):
  method = methods.get_method(preset)
  assert type(method).__name__ == config_class
  for call in (method.check_merge, lambda: method.merge({}, {}, None),
               lambda: method.unmerge({}, {}, None)):
    with pytest.raises(NotImplementedError, match=f'^{config_class} cannot be merged'):
      call()
  with pytest.raises(NotImplementedError, match='only LoRA, VeRA, DoRA and \\(IA\\)3 can'):
    method.merge({}, {}, None)


def test_adapter_drop_narrows_a_verbose_pattern_written_over_several_lines():
  """A `(?x)` train_also pattern may span lines (comments included); AdapterDrop keeps its flag
  in front and all of its lines."""
  import re
  verbose = '(?x) .*layer_norm   # the layer norms\n  /(scale|bias)   # both leaves\n'
  houlsby = methods.get_method('houlsby', train_also=(verbose,))
  (pattern,) = methods.adapter_drop(houlsby, [0]).train_also
  assert pattern.startswith('(?x)')
  expected = {'encoder/layer_1/ffn_layer_norm/scale': True, 'encoder/layer_2/ffn_layer_norm/bias': True,
              'encoder/layer_0/ffn_layer_norm/scale': False, 'embeddings/layer_norm/scale': False,
              'encoder/layer_1/ffn/output/kernel': False}
  assert {path: re.fullmatch(pattern, path) is not None for path in expected} == expected


def test_fusion_options_out_of_range_name_the_option_and_the_fix():
  fusion = methods.FusionConfig
  for options, message in (({'temperature': 0.0}, 'The fusion temperature must be > 0, got 0.0'),
                           ({'regularization': -0.5}, 'regularization must be >= 0, got -0.5'),
                           ({'value': False, 'regularization': 0.01},
                            'with value=False there is none: set regularization=0.0'),
                           ({'adapters': ('a', 'a')}, "Fused adapter names repeat: \\('a', 'a'\\)")):
    with pytest.raises(ValueError, match=message):
      fusion(**{'adapters': ('a', 'b'), **options})


def test_compacter_whose_n_does_not_divide_names_n_width_site_and_bottleneck():
  site = SiteInfo(path='encoder/layer_0/ffn/output', placement='output', in_features=64,
                  out_features=30)
  with pytest.raises(ValueError, match=r'^Compacter needs n=4 to divide the width \(30 at '
                                       r'encoder/layer_0/ffn/output\) and the bottleneck \(8\); '
                                       r'choose another n or size.$'):
    methods.get_method('compacter', size=8).make_module(site)


def test_lora_at_another_placement_is_refused_naming_parallel():
  with pytest.raises(ValueError, match="^LoRA sites must use placement 'parallel'.$"):
    methods.get_method('lora', sites=(('attention/query', 'output'),))
