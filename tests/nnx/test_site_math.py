"""The adapted forward at one site against float64 numpy written here, and what Stack and Average
compute there.

The site is the decoder's `lm_head` (an `nnx.Linear`): its input is `Decoder.hidden(ids)`, which no
adapter touches, and its output is the model's output, so the whole adapted forward at that site
can be written out by hand.
"""

import math

import jax
import numpy as np
from flax import nnx

from adapters_jax.methods import get_method
from adapters_jax.nnx import splice
from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.splicing.composition import Average, Stack
from tests.nnx import hosts

HEAD = 'lm_head'


def _host_with(*adapters):
  """A decoder with `(name, method)` adapters on `lm_head`, their leaves perturbed."""
  model = hosts.Decoder(nnx.Rngs(0), layers=1)
  ids = hosts.sample_ids()
  for index, (name, method) in enumerate(adapters):
    splice.add_adapter(model, name, method, jax.random.key(index), ids)
  hosts.randomize(model, AdapterParam, seed=3)
  return model, ids


def _arrays(tree):
  return {k: _arrays(v) if isinstance(v, nnx.Dict) else np.asarray(v[...], np.float64)
          for k, v in tree.items()}


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _houlsby(p, y):
  """y + up(gelu(down(y))), float64."""
  h = _gelu(y @ p['down']['kernel'] + p['down']['bias'])
  return y + h @ p['up']['kernel'] + p['up']['bias']


def _base(model, ids):
  x = np.asarray(model.hidden(ids), np.float64)  # [batch, length, width]
  y = x @ np.asarray(model.lm_head.kernel[...], np.float64) + np.asarray(model.lm_head.bias[...],
                                                                         np.float64)
  return x, y  # y: [batch, length, vocab]


def test_lora_is_x_a_b_times_alpha_over_r():
  model, ids = _host_with(('lora', get_method('lora', rank=4, alpha=12.0,
                                              sites=((HEAD, 'parallel'),))))
  splice.set_active(model, 'lora')
  p = _arrays(model.lm_head.adapters['lora'])
  x, y = _base(model, ids)
  want = y + x @ p['lora_a'] @ p['lora_b'] * (12.0 / 4)
  np.testing.assert_allclose(np.asarray(model(ids), np.float64), want, rtol=1e-5, atol=1e-5)


def test_houlsby_is_the_bottleneck_on_the_output():
  model, ids = _host_with(('h', get_method('houlsby', size=5, sites=((HEAD, 'output'),))))
  splice.set_active(model, 'h')
  _, y = _base(model, ids)
  want = _houlsby(_arrays(model.lm_head.adapters['h']), y)
  np.testing.assert_allclose(np.asarray(model(ids), np.float64), want, rtol=1e-5, atol=1e-5)


def test_stack_and_average_of_bottlenecks():
  method = get_method('houlsby', size=5, sites=((HEAD, 'output'),))
  model, ids = _host_with(('h1', method), ('h2', method))
  p1, p2 = (_arrays(model.lm_head.adapters[name]) for name in ('h1', 'h2'))
  _, y = _base(model, ids)
  splice.set_active(model, Stack('h1', 'h2'))  # h2 after h1
  np.testing.assert_allclose(model(ids), _houlsby(p2, _houlsby(p1, y)), rtol=1e-5, atol=1e-5)
  splice.set_active(model, ('h2', 'h1'))  # a tuple is a Stack, in its order
  np.testing.assert_allclose(model(ids), _houlsby(p1, _houlsby(p2, y)), rtol=1e-5, atol=1e-5)
  splice.set_active(model, Average('h1', 'h2', weights=(3, 1)))  # weights normalised
  want = 0.75 * _houlsby(p1, y) + 0.25 * _houlsby(p2, y)
  np.testing.assert_allclose(model(ids), want, rtol=1e-5, atol=1e-5)


def test_an_average_with_an_adapter_absent_at_a_site_passes_the_site_through_for_it():
  # h1 sits on lm_head only, v on the attention values only (zero-initialised: values unchanged).
  # At lm_head the average is 0.5 h1(y) + 0.5 y (the Linen splice's rule), not h1(y).
  model, ids = _host_with(('h1', get_method('houlsby', size=5, sites=((HEAD, 'output'),))))
  _, y = _base(model, ids)
  p1 = _arrays(model.lm_head.adapters['h1'])
  splice.add_adapter(model, 'v', get_method('lora', sites=((r'blocks/0/attention/value', 'parallel'),)),
                     jax.random.key(9), ids)  # lora_b zero: the values are unchanged
  splice.set_active(model, Average('h1', 'v'))
  np.testing.assert_allclose(model(ids), 0.5 * _houlsby(p1, y) + 0.5 * y, rtol=1e-5, atol=1e-5)
