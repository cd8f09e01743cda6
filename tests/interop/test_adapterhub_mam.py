"""AdapterHub's MAM adapter (`mam`: prefix tuning + a scaled parallel FFN adapter) with its weights
copied into our `mam` union gives AdapterHub's logits on the same BERT (UniPELT's check:
test_adapterhub_unipelt.py)."""

import re

import adapters
import jax
import numpy as np
from flax import traverse_util

from adapters_jax import add_adapter, get_method
from tests.interop.conftest import (
  assert_close,
  inputs,
  load_ours,
  our_logits,
  randomize_torch,
  torch_base,
  torch_logits,
  with_union_prefix,
)

P, BOTTLENECK = 30, 800  # AdapterHub's MAMConfig defaults (ours alike)


def test_adapterhub_mam_on_bert_gives_their_logits(base_dir):
  model = torch_base(base_dir('bert'))
  base = torch_logits(model, 'bert')
  adapters.init(model)
  model.add_adapter('task', config='mam')
  randomize_torch(model, lambda n: n.startswith('classifier') or '.task.' in n or
                  n.endswith('.task'))
  model.set_active_adapters('task')
  model.eval()
  theirs = torch_logits(model, 'bert')
  state = {k: v.numpy() for k, v in model.state_dict().items()}

  pretrained = load_ours(base_dir('bert'))
  ids, _ = inputs('bert')
  union = get_method('mam')
  assert (union.members[0].prefix_length, union.members[0].bottleneck_size) == (P, BOTTLENECK)
  spliced, params = add_adapter(pretrained.model, pretrained.params, 'task', union,
                                jax.random.key(0), ids)
  params = with_union_prefix(spliced, params, 'task', union, state, P)
  flat = traverse_util.flatten_dict(params, sep='/')
  copied = 0
  for key, value in state.items():  # the parallel FFN adapter: `output.adapters.task.adapter_*`
    match = re.fullmatch(r'bert\.encoder\.layer\.(\d+)\.output\.adapters\.task\.'
                         r'(adapter_down\.0|adapter_up)\.(weight|bias)', key)
    if match:
      layer, projection, leaf = match.groups()
      ours = (f'encoder/layer_{layer}/ffn/adapters/task/'
              f'{"down" if projection == "adapter_down.0" else "up"}/'
              f'{"kernel" if leaf == "weight" else "bias"}')
      assert flat[ours].shape == value.T.shape if leaf == 'weight' else value.shape
      flat[ours] = value.T if leaf == 'weight' else value
      copied += 1
  assert copied == 4 * 2  # down and up, kernel and bias, per layer
  flat['classifier/dense/kernel'] = state['classifier.weight'].T
  flat['classifier/dense/bias'] = state['classifier.bias']
  ours = our_logits(spliced, traverse_util.unflatten_dict(flat, sep='/'), 'bert', 'task')
  assert_close(ours, theirs, base)
  np.testing.assert_allclose(ours, theirs, atol=1e-4)
