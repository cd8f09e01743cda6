"""README.md's NNX training loop runs as written: the loss falls, only adapter leaves change, and
the saved adapter restores onto a freshly built model with the same outputs."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adapters_jax.nnx.adapted_site import AdapterParam
from adapters_jax.nnx.splice import set_active
from tests.readme_commands import ROOT


def _nnx_block() -> str:
  readme = (ROOT / 'README.md').read_text()
  section = readme.split('## NNX models\n', 1)[1].split('\n## ', 1)[0]
  (block,) = re.findall(r'^```python\n(.*?)^```', section, flags=re.S | re.M)
  return block


def test_the_readme_nnx_training_loop(tmp_path):
  block = _nnx_block()
  assert 'wrt=AdapterParam' in block and 'nnx.value_and_grad' in block and '@nnx.jit' in block
  namespace: dict = {}
  exec(compile(block.replace('/tmp/nnx_task', str(tmp_path / 'nnx_task')), 'README.md', 'exec'),
       namespace)
  losses, model, fresh, ids = (namespace[k] for k in ('losses', 'model', 'fresh', 'ids'))
  assert float(losses[-1]) < 0.5 * float(losses[0])
  base = namespace['make_model']()  # the same seeds: the weights the loop started from
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Not(AdapterParam)),
               nnx.state(base, nnx.Not(AdapterParam)))
  assert not np.array_equal(model(ids), base(ids))  # the adapter trained
  set_active(fresh, 'task')
  np.testing.assert_array_equal(fresh(ids), model(ids))
  assert jnp.isfinite(losses[-1])
