"""Adapter-only Orbax checkpoints: size, roundtrip, mismatches, corruption."""

import json
import os
import warnings

import jax
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import (
    CheckpointError,
    adapter_leaves,
    add_adapter,
    get_method,
    load_record,
    restore_adapter,
    restore_adapters,
    save_adapter,
)
from adapters_jax.checkpoint.digest import DIGEST_FILE, write_digests
from adapters_jax.splicing import trainable
from tests.tiny_model import TinyClassifier, init_tiny, tiny_batch


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path)
             for f in files)


def _trained(model, method, seed=3):
  """A spliced model whose adapter and trained extras hold random (non-init) values."""
  params = init_tiny(model)
  ids, mask = tiny_batch(vocab=model.vocab)
  spliced, params = add_adapter(model, params, 'sent', method, jax.random.key(1), ids, mask)
  mask_tree = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter('sent')]))
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_mask = traverse_util.flatten_dict(mask_tree, sep='/')
  key = jax.random.key(seed)
  for path in flat:
    if flat_mask[path]:
      key, sub = jax.random.split(key)
      flat[path] = flat[path] + 0.1 * jax.random.normal(sub, flat[path].shape)
  return spliced, traverse_util.unflatten_dict(flat, sep='/'), mask_tree, (ids, mask)


BIG_VOCAB = TinyClassifier(vocab=40000, hidden=32, intermediate=64)


def test_checkpoint_holds_only_trained_leaves_and_roundtrips(tmp_path):
  model = BIG_VOCAB
  spliced, params, mask_tree, (ids, mask) = _trained(model, get_method('houlsby', size=8))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-40k',
                      extra={'task': 'demo'})
  trained, _ = trainable.split(params, mask_tree)
  trained_bytes = trainable.tree_bytes(trained)
  base_bytes = trainable.tree_bytes(params) - trained_bytes
  assert base_bytes > 20 * trained_bytes
  assert _dir_bytes(path) <= 1.5 * trained_bytes + 2**20
  record = load_record(path)
  assert record['adapter'] == 'sent' and record['base']['name'] == 'tiny-40k'
  assert record['method']['kind'] == 'bottleneck' and record['extra'] == {'task': 'demo'}
  assert 'embeddings/embedding' not in record['trained_paths']

  # Restore onto a freshly initialised base of the same shape (other base values on purpose:
  # only trained leaves come from the checkpoint).
  fresh = init_tiny(model, seed=0)
  restored_spliced, restored = restore_adapter(path, model, fresh, ids, mask)
  want = spliced.apply(params, ids, mask, active='sent')
  got = restored_spliced.apply(restored, ids, mask, active='sent')
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  for p, v in adapter_leaves(params, 'sent').items():
    np.testing.assert_array_equal(np.asarray(adapter_leaves(restored, 'sent')[p]), np.asarray(v))


def test_restore_onto_other_shapes_names_every_difference(tmp_path):
  spliced, params, _, _ = _trained(TinyClassifier(), get_method('houlsby', size=4))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-16')
  wider = TinyClassifier(hidden=24, intermediate=48)
  ids, mask = tiny_batch()
  with pytest.raises(CheckpointError) as err:
    restore_adapter(path, wider, init_tiny(wider), ids, mask)
  message = str(err.value)
  assert "trained on base 'tiny-16'" in message
  assert 'encoder/layer_0/attention/output/adapters/sent/down/kernel expected (24, 4), ' \
         'checkpoint has (16, 4)' in message
  assert 'encoder/layer_1/ffn/output/adapters/sent/up/kernel' in message
  assert message.count('shape:') >= 8


def test_restore_with_other_method_config_lists_missing_and_unexpected(tmp_path):
  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('pfeiffer'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent')
  # Rewrite the record (and its digest): claim the checkpoint is a LoRA adapter.
  _edit_record(path, lambda record: record.update(method=get_method('lora').to_dict()))
  with pytest.raises(CheckpointError) as err:
    restore_adapter(path, TinyClassifier(), init_tiny(TinyClassifier()), ids, mask)
  message = str(err.value)
  assert 'missing:    encoder/layer_0/attention/query/adapters/sent/lora_a' in message
  assert 'unexpected: encoder/layer_0/ffn/output/adapters/sent/down/kernel' in message


def test_corrupt_checkpoint_fails_clearly(tmp_path):
  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('lora'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent')
  # Truncate every data file of the params item.
  for root, _, files in os.walk(os.path.join(path, 'params')):
    for f in files:
      if f not in ('_METADATA', '_CHECKPOINT_METADATA', 'commit_success.txt'):
        with open(os.path.join(root, f), 'r+b') as fh:
          fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
  with pytest.raises(CheckpointError, match=r'ckpt is damaged: \d file\(s\) differ from its '
                     r'files.sha256.json \(e.g. params/.*\); restore a copy'):
    restore_adapter(path, TinyClassifier(), init_tiny(TinyClassifier()), ids, mask)
  os.remove(os.path.join(path, DIGEST_FILE))  # saved before digests: Orbax's read fails instead
  with pytest.raises(CheckpointError, match='corrupt or truncated'):
    restore_adapter(path, TinyClassifier(), init_tiny(TinyClassifier()), ids, mask)
  os.remove(os.path.join(path, 'record', 'metadata'))
  with pytest.raises(CheckpointError, match='not a complete adapter checkpoint'):
    load_record(path)
  with pytest.raises(CheckpointError, match='No checkpoint at'):
    load_record(tmp_path / 'nowhere')


def test_failed_save_never_replaces_a_good_checkpoint(tmp_path):
  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('lora'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent')
  before = sorted(os.listdir(path))
  with pytest.raises(TypeError):
    # A record that is not JSON-serialisable makes the save fail half-way.
    save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', extra={'bad': object()})
  assert sorted(os.listdir(path)) == before
  assert [p for p in os.listdir(tmp_path) if p != 'ckpt'] == []  # no temporary left behind
  restored_spliced, restored = restore_adapter(path, TinyClassifier(), init_tiny(TinyClassifier()),
                                               ids, mask)
  np.testing.assert_array_equal(
      np.asarray(restored_spliced.apply(restored, ids, mask, active='sent')),
      np.asarray(spliced.apply(params, ids, mask, active='sent')))


def test_overwrite_replaces_old_checkpoint(tmp_path):
  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('lora'))
  save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', extra={'round': 1})
  save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', extra={'round': 2})
  assert load_record(tmp_path / 'ckpt')['extra'] == {'round': 2}
  assert os.listdir(tmp_path) == ['ckpt']


def _edit_record(path, edit):
  record_path = os.path.join(path, 'record', 'metadata')
  with open(record_path) as f:
    record = json.load(f)
  edit(record)
  with open(record_path, 'w') as f:
    json.dump(record, f)
  write_digests(path)  # a record saved so, not a damaged file


def test_restore_onto_other_weights_warns_and_strict_refuses(tmp_path):
  model = TinyClassifier()
  spliced, params, _, (ids, mask) = _trained(model, get_method('houlsby', size=4))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-a')
  assert load_record(path)['base']['weights_fingerprint']
  # The base it was trained on: silent, although its head and layer norms (trained, restored from
  # the checkpoint) hold other values than the trained ones.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    restore_adapter(path, model, init_tiny(model), ids, mask, base_name='tiny-a')
  other = init_tiny(model, seed=1)  # same shapes, other weights
  with pytest.warns(UserWarning, match="(?s)trained on base 'tiny-a'.*'tiny-b'.*other weights.*strict=True"):
    restored_spliced, restored = restore_adapter(path, model, other, ids, mask, base_name='tiny-b')
  for p, v in adapter_leaves(params, 'sent').items():
    np.testing.assert_array_equal(np.asarray(adapter_leaves(restored, 'sent')[p]), np.asarray(v))
  with pytest.raises(CheckpointError, match="(?s)trained on base 'tiny-a'; the base it is restored onto "
                     "\\('tiny-b'\\) has the same shapes but other weights "
                     "\\(weights fingerprint differs\\), so the adapter will not compute what it "
                     "was trained to. Load the base it was trained on.$"):
    restore_adapter(path, model, other, ids, mask, base_name='tiny-b', strict=True)
  # A record written before weights were fingerprinted restores as before.
  _edit_record(path, lambda record: record['base'].pop('weights_fingerprint'))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    restore_adapter(path, model, other, ids, mask, strict=True)


def test_check_base_refuses_other_shapes_even_when_the_adapter_fits(tmp_path):
  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('lora'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-64')
  wider_vocab = TinyClassifier(vocab=80)  # other embeddings; every adapter site as before
  base = init_tiny(wider_vocab)
  for restore in (restore_adapter, restore_adapters):
    with pytest.raises(CheckpointError, match="base 'tiny-64' with other parameter shapes.*check_base=False"):
      restore(path if restore is restore_adapter else [path], wider_vocab, base, ids, mask)
  with pytest.warns(UserWarning, match='other weights'):
    _, restored = restore_adapter(path, wider_vocab, base, ids, mask, check_base=False)
  for p, v in adapter_leaves(params, 'sent').items():
    np.testing.assert_array_equal(np.asarray(adapter_leaves(restored, 'sent')[p]), np.asarray(v))
  # Over one base, a head with another label count is not another base: restored, head returned.
  three = TinyClassifier(num_labels=3)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    _, restored, heads = restore_adapters([path], three, init_tiny(three), ids, mask)
  assert heads['sent'].head['classifier/kernel'].shape == (16, 2)
  for p, v in adapter_leaves(params, 'sent').items():
    np.testing.assert_array_equal(np.asarray(adapter_leaves(restored, 'sent')[p]), np.asarray(v))


def test_save_trained_writes_the_masked_leaves_and_a_record_restore_adapter_refuses(tmp_path):
  """A head-only run's checkpoint: exactly the head's leaves with their values, a record with no
  adapter and the base's fingerprints; `restore_adapter` names the way to load it."""
  from adapters_jax.checkpoint.save import (
    FORMAT,
    base_fingerprint,
    load_leaves,
    overwrite_leaves,
    save_trained,
    weights_fingerprint,
  )
  from adapters_jax.version import __version__

  model = TinyClassifier()
  params = init_tiny(model)
  flat = traverse_util.flatten_dict(params, sep='/')
  head = sorted(p for p in flat if p.startswith('classifier/'))
  assert head and len(head) < len(flat)
  mask = traverse_util.unflatten_dict({p: p in head for p in flat}, sep='/')
  path = save_trained(os.fspath(tmp_path / 'head'), params, mask, base_name='tiny-64',
                      extra={'task': 'sst2', 'best': {'step': 3}})
  assert path == os.fspath(tmp_path / 'head')
  record = load_record(path)
  assert (record['format'], record['library_version']) == (FORMAT, __version__)
  assert (record['adapter'], record['method'], record['sites']) == (None, None, [])
  assert record['trained_paths'] == head
  assert record['extra'] == {'task': 'sst2', 'best': {'step': 3}}
  assert record['base'] == {'name': 'tiny-64', 'fingerprint': base_fingerprint(params),
                            'weights_fingerprint': weights_fingerprint(params, skip=head)}
  leaves = load_leaves(path)
  assert sorted(leaves) == head
  for p in head:
    np.testing.assert_array_equal(leaves[p], np.asarray(flat[p]))
  other = init_tiny(model, seed=5)
  restored = traverse_util.flatten_dict(overwrite_leaves(other, leaves), sep='/')
  other_flat = traverse_util.flatten_dict(other, sep='/')
  for p in flat:
    np.testing.assert_array_equal(restored[p], flat[p] if p in head else other_flat[p])
  with pytest.raises(CheckpointError, match='holds no adapter .*load it with load_leaves'):
    restore_adapter(path, model, other, *tiny_batch(vocab=model.vocab))
  # Without a base name or extra facts: an empty name and no extras.
  bare = load_record(save_trained(tmp_path / 'bare', params, mask))
  assert bare['base']['name'] == '' and bare['extra'] == {}


def test_an_adapter_of_another_width_names_its_checkpoint_and_the_misshaped_leaves(tmp_path):
  import re

  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('lora'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-64')
  wider = TinyClassifier(hidden=24, intermediate=48)
  for restore in (restore_adapter, restore_adapters):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # the base check is off: its warning is not under test
      with pytest.raises(CheckpointError, match=f'Checkpoint {re.escape(path)} does not fit this model'
                         '(.|\n)*shape: +encoder/layer_0/attention/query/adapters/sent/lora_a '
                         'expected \\(24, 8\\), checkpoint has \\(16, 8\\)'):
        restore(path if restore is restore_adapter else [path], wider, init_tiny(wider), ids, mask,
                check_base=False)


def test_a_record_whose_method_no_longer_fits_its_leaves_is_refused_on_the_same_base(tmp_path):
  """Same base, but the record says rank 4 while the leaves are rank 8 (an edited or mixed-up
  checkpoint): the diff names each leaf, with nothing about another base before it."""
  import re

  spliced, params, _, (ids, mask) = _trained(TinyClassifier(), get_method('lora'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-64')
  assert load_record(path)['method']['rank'] == 8
  _edit_record(path, lambda record: record['method'].update(rank=4))
  model = TinyClassifier()
  with pytest.raises(CheckpointError, match=f'^Checkpoint {re.escape(path)} does not fit this model.\n'
                     '  shape: +encoder/layer_0/attention/query/adapters/sent/lora_a expected '
                     '\\(16, 4\\), checkpoint has \\(16, 8\\)'):
    restore_adapter(path, model, init_tiny(model), ids, mask)


def test_overwritten_leaves_keep_the_dtype_of_the_params_they_replace():
  """A float32 checkpoint restored into a bfloat16 base keeps bfloat16 (frozen_dtype runs)."""
  from adapters_jax.checkpoint.save import overwrite_leaves

  params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), init_tiny(TinyClassifier()))
  leaves = {'classifier/kernel': np.full((16, 2), 0.5, np.float32)}
  out = traverse_util.flatten_dict(overwrite_leaves(params, leaves), sep='/')
  assert out['classifier/kernel'].dtype == jax.numpy.bfloat16
  np.testing.assert_array_equal(np.asarray(out['classifier/kernel'], np.float32), leaves['classifier/kernel'])


def test_the_record_lists_the_adapters_sites_and_its_method(tmp_path):
  spliced, params, _, _ = _trained(TinyClassifier(), get_method('lora'))
  path = save_adapter(tmp_path / 'ckpt', spliced, params, 'sent', base_name='tiny-64')
  record = load_record(path)
  # LoRA's default sites on the tiny model, written out: query and value of both layers.
  assert record['sites'] == [f'encoder/layer_{i}/attention/{m}' for i in (0, 1) for m in ('query', 'value')]
  assert record['adapter'] == 'sent' and record['method']['kind'] == 'lora'


def test_restore_adapters_refusals_word_for_word(tmp_path):
  """Over one base: a checkpoint without an adapter, two adapters of one name, and an adapter that
  trained base weights (Houlsby's layer norms) are refused, each naming the checkpoint and the fix."""
  import re

  from adapters_jax.checkpoint.save import save_trained

  model = TinyClassifier()
  base = init_tiny(model)
  ids, mask = tiny_batch(vocab=model.vocab)
  flat = traverse_util.flatten_dict(base, sep='/')
  head_mask = traverse_util.unflatten_dict({p: p.startswith('classifier/') for p in flat}, sep='/')
  head_only = save_trained(os.fspath(tmp_path / 'head'), base, head_mask, base_name='tiny-64')
  with pytest.raises(CheckpointError) as error:
    restore_adapters([head_only], model, base, ids, mask)
  assert str(error.value) == (f'{head_only} holds no adapter (a full fine-tuning or head-only run); '
                              'only adapter checkpoints share a base.')

  spliced, params, _, _ = _trained(model, get_method('lora'))
  first = save_adapter(tmp_path / 'first', spliced, params, 'sent', base_name='tiny-64')
  second = save_adapter(tmp_path / 'second', spliced, params, 'sent', base_name='tiny-64')
  with pytest.raises(CheckpointError) as error:
    restore_adapters([first, second], model, base, ids, mask)
  assert str(error.value) == (f"Two adapters are named 'sent' ({second}); pass rename=[...] to give "
                              'each checkpoint its own name.')

  spliced, params, _, _ = _trained(model, get_method('houlsby', size=4))
  houlsby = save_adapter(tmp_path / 'houlsby', spliced, params, 'sent', base_name='tiny-64')
  norm = r"'encoder/layer_\d/\w+_layer_norm/(?:scale|bias)'"
  with pytest.raises(CheckpointError, match=(
      f'^Checkpoint {re.escape(houlsby)} also trained base weights \\[(?:{norm}, ){{3}}{norm}\\]; '
      'several adapters over one base cannot each change them. Train the adapter with '
      "train_also=\\(\\) \\(e.g. --config.method_options.train_also='\\(\\)'\\) or use pfeiffer / "
      'lora.$')):
    restore_adapters([houlsby], model, base, ids, mask)
