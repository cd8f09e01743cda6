"""AdapterHub's UniPELT (gated prefix + gated bottleneck + gated LoRA) with random weights copied into
our `unipelt` union gives AdapterHub's logits on the same BERT: the prefix gate reads the attention's
input, every gate is a mean over positions of sigmoid(Linear(x, 1)), gated LoRA has no alpha / r.

AdapterHub's bottleneck member is set to the Pfeiffer form ours computes (`original_ln_before=False`:
the adapter reads the FFN output h; its default `seq_bn` reads LayerNorm(h + residual), which no
site of ours sees); the prefix and LoRA members are AdapterHub's defaults for UniPELT."""

import re

import adapters
import jax
from adapters import SeqBnConfig, UniPELTConfig
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

P = 10  # UniPELTConfig's prefix length (ours alike)

# AdapterHub key (after `bert.encoder.layer.<i>.`) -> our path (after `encoder/layer_<i>/`), for
# every tensor outside the prefix pool; torch's [out, in] matrices are transposed.
_RENAMES = (
    (r'attention\.self\.prefix_tuning\.prefix_gates\.task\.(?P<leaf>weight|bias)',
     'attention/prefix/adapters/task/gate/gate/{leaf}'),
    (r'attention\.self\.(?P<proj>query|value)\.loras\.task\.gate\.(?P<leaf>weight|bias)',
     'attention/{proj}/adapters/task/gate/gate/{leaf}'),
    (r'attention\.self\.(?P<proj>query|value)\.loras\.task\.lora_(?P<ab>A|B)',
     'attention/{proj}/adapters/task/lora_{ab}'),
    (r'output\.adapters\.task\.gate\.(?P<leaf>weight|bias)', 'ffn/output/adapters/task/gate/gate/{leaf}'),
    (r'output\.adapters\.task\.adapter_down\.0\.(?P<leaf>weight|bias)',
     'ffn/output/adapters/task/down/{leaf}'),
    (r'output\.adapters\.task\.adapter_up\.(?P<leaf>weight|bias)', 'ffn/output/adapters/task/up/{leaf}'),
)
_LEAVES = {'weight': 'kernel', 'bias': 'bias', 'A': 'a', 'B': 'b'}


def _our_path(key: str) -> str | None:
  """Our flat param path of an AdapterHub UniPELT tensor outside the prefix pool, or None."""
  match = re.fullmatch(r'bert\.encoder\.layer\.(\d+)\.(.*)', key)
  for pattern, template in _RENAMES if match else ():
    hit = re.fullmatch(pattern, match.group(2))
    if hit:
      names = {k: _LEAVES.get(v, v) for k, v in hit.groupdict().items()}
      return f'encoder/layer_{match.group(1)}/' + template.format(**names)
  return None


def test_adapterhub_unipelt_on_bert_gives_their_logits(base_dir):
  model = torch_base(base_dir('bert'))
  base = torch_logits(model, 'bert')
  adapters.init(model)
  model.add_adapter('task', config=UniPELTConfig(adapter=SeqBnConfig(reduction_factor=16,
                                                                     original_ln_before=False)))
  randomize_torch(model, lambda n: n.startswith('classifier') or '.task.' in n or
                  n.endswith('.task'))
  model.set_active_adapters('task')
  model.eval()
  theirs = torch_logits(model, 'bert')
  state = {k: v.numpy() for k, v in model.state_dict().items()}

  pretrained = load_ours(base_dir('bert'))
  ids, _ = inputs('bert')
  union = get_method('unipelt')
  assert union.members[0].prefix_length == P and union.members[0].use_gating
  spliced, params = add_adapter(pretrained.model, pretrained.params, 'task', union,
                                jax.random.key(0), ids)
  params = with_union_prefix(spliced, params, 'task', union, state, P)
  flat = traverse_util.flatten_dict(params, sep='/')
  copied = set()
  for key, value in state.items():
    ours = _our_path(key)
    if ours is not None:
      value = value.T if value.ndim == 2 else value
      assert flat[ours].shape == value.shape, (key, ours)
      flat[ours] = value
      copied.add(ours)
  # Every site leaf of ours but the prefix MLP's output layer got AdapterHub's value, per layer: the
  # prefix gate (kernel, bias), 2 LoRAs (a, b, gate kernel, gate bias), the bottleneck (down, up,
  # gate: kernel, bias).
  site_leaves = {p for p in flat if re.search(r'/adapters/task/(?!output/)', p)
                 and not p.startswith('adapters/')}
  assert copied == site_leaves and len(copied) == 2 * (2 + 2 * 4 + 3 * 2)
  flat['classifier/dense/kernel'] = state['classifier.weight'].T
  flat['classifier/dense/bias'] = state['classifier.bias']
  ours = our_logits(spliced, traverse_util.unflatten_dict(flat, sep='/'), 'bert', 'task')
  assert_close(ours, theirs, base)
