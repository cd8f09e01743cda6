"""A merged adapter (its update folded into the base weights) is refused wherever running, saving,
removing or combining it would give a wrong model; after `unmerge_adapter` each works again."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import (
    Average,
    Stack,
    adapter_leaves,
    add_adapter,
    add_fusion,
    get_method,
    merge_adapter,
    remove_adapter,
    save_adapter,
    unmerge_adapter,
)
from tests.tiny_model import TinyClassifier, init_tiny, perturb_adapter, tiny_batch


@pytest.fixture(scope='module')
def merged():
  model = TinyClassifier()
  params = init_tiny(model)
  ids, mask = tiny_batch()
  spliced, params = add_adapter(model, params, 'a', get_method('lora'), jax.random.key(1), ids, mask)
  spliced, params = add_adapter(spliced, params, 'b', get_method('lora'), jax.random.key(2), ids, mask)
  params = perturb_adapter(params, 'a', scale=0.2)
  merged_spliced, merged_params = merge_adapter(spliced, params, 'a')
  return model, (spliced, params), merged_spliced, merged_params, (ids, mask)


def test_removing_a_merged_adapter_is_refused(merged):
  """Removing it would drop the only record of the update that is still inside the base weights."""
  model, _, spliced, merged_params, _ = merged
  with pytest.raises(ValueError, match=r"'a' is merged into the base weights; unmerge_adapter it "
                                       r"before removing it \(its update would stay in the base\)"):
    remove_adapter(spliced, merged_params, 'a')
  unmerged_spliced, unmerged = unmerge_adapter(spliced, merged_params, 'a')
  removed_spliced, removed = remove_adapter(unmerged_spliced, unmerged, 'a')
  assert removed_spliced.names == ('b',)
  # b's leaves stay, value for value; no leaf of a is left.
  for path, value in adapter_leaves(unmerged, 'b').items():
    np.testing.assert_array_equal(np.asarray(adapter_leaves(removed, 'b')[path]), np.asarray(value))
  assert not [p for p in traverse_util.flatten_dict(removed, sep='/') if '/adapters/a/' in p]
  # What stays is the base model's own weights (up to the merge/unmerge rounding) and adapter b.
  base = traverse_util.flatten_dict(init_tiny(model), sep='/')
  kept = traverse_util.flatten_dict(removed, sep='/')
  for path, value in base.items():
    np.testing.assert_allclose(np.asarray(kept[path]), np.asarray(value), rtol=1e-5, atol=1e-6)


def test_saving_a_merged_adapter_is_refused(merged, tmp_path):
  _, _, spliced, merged_params, _ = merged
  with pytest.raises(ValueError, match=r"'a' is merged.*unmerge it before saving"):
    save_adapter(tmp_path / 'a', spliced, merged_params, 'a')
  assert not (tmp_path / 'a').exists()


@pytest.mark.parametrize('node', [Stack('a', 'b'), Average('a', 'b'), 'a'])
def test_running_a_merged_adapter_again_is_refused(merged, node):
  """It already runs inside the base: running it as an adapter too would apply its update twice."""
  _, _, spliced, merged_params, (ids, mask) = merged
  with pytest.raises(ValueError, match="'a' is merged"):
    spliced.apply(merged_params, ids, mask, active=node)


def test_the_adapters_not_merged_still_run(merged):
  _, (plain, params), spliced, merged_params, (ids, mask) = merged
  # b on the merged base = a then b on the plain base (LoRA updates add: both at query/value).
  np.testing.assert_allclose(np.asarray(spliced.apply(merged_params, ids, mask, active='b')),
                             np.asarray(plain.apply(params, ids, mask, active=Stack('a', 'b'))),
                             rtol=1e-4, atol=1e-5)


def test_a_lora_adapter_cannot_be_fused(merged):
  """Only bottleneck adapters fuse, and they never merge: the fusion's merged guard sits behind
  this refusal."""
  _, _, spliced, merged_params, _ = merged
  with pytest.raises(ValueError, match='fuses bottleneck adapters'):
    add_fusion(spliced, merged_params, ('a', 'b'), jax.random.key(3))


def test_merging_twice_or_unmerging_an_unmerged_adapter_is_refused(merged):
  _, (plain, params), spliced, merged_params, _ = merged
  with pytest.raises(ValueError, match="^Adapter 'a' is already merged.$"):
    merge_adapter(spliced, merged_params, 'a')
  with pytest.raises(ValueError, match="^Adapter 'a' is not merged.$"):
    unmerge_adapter(plain, params, 'a')
