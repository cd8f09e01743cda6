"""`config.init_adapter_from`: a run's adapter starts from an adapter checkpoint of ours."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from adapters_jax import data
from adapters_jax.checkpoint import save
from adapters_jax.train.experiment import build_experiment
from tests.train.test_loop import smoke_config


def test_adapter_leaves_start_from_the_checkpoint_renamed_head_left_out(tiny_bert_dir, tmp_path):
  # Bugs caught: leaves not renamed to the run's adapter (nothing loaded, or a diff error), the
  # source task's head copied over the new one, another method config accepted silently.
  source = build_experiment(smoke_config(tiny_bert_dir, method='pfeiffer'),
                            data.get_task('rotten_tomatoes'))
  flat = traverse_util.flatten_dict(source.params, sep='/')
  rng = np.random.default_rng(0)
  trained = {p: np.asarray(v) + rng.normal(0, 0.5, v.shape).astype(np.float32)
             for p, v in flat.items() if '/adapters/rotten_tomatoes/' in p or
             p.startswith('classifier/')}
  flat.update({p: jnp.asarray(v) for p, v in trained.items()})
  params = traverse_util.unflatten_dict(flat, sep='/')
  save.save_adapter(tmp_path / 'source', source.spliced, params, 'rotten_tomatoes',
                          mask=source.mask, base_name=tiny_bert_dir)

  def target(**overrides):
    config = smoke_config(tiny_bert_dir, **{'method': 'pfeiffer', 'task': 'tweet_sentiment',
                                            **overrides})
    return build_experiment(config, data.get_task('tweet_sentiment'))

  fresh = traverse_util.flatten_dict(target().params, sep='/')
  started = traverse_util.flatten_dict(
      target(init_adapter_from=str(tmp_path / 'source')).params, sep='/')
  renamed = {p.replace('/adapters/rotten_tomatoes/', '/adapters/tweet_sentiment/'): v
             for p, v in trained.items() if not p.startswith('classifier/')}
  assert renamed and set(renamed) == {p for p in fresh if '/adapters/tweet_sentiment/' in p}
  for path, value in started.items():
    expected = renamed.get(path, fresh[path])
    np.testing.assert_array_equal(np.asarray(value), np.asarray(expected), err_msg=path)

  with pytest.raises(save.CheckpointError, match=r"differs from this run's in \['size'\]"):
    target(init_adapter_from=str(tmp_path / 'source'), method_options={'size': 4})
  with pytest.raises(ValueError, match='has none to initialise'):
    target(init_adapter_from=str(tmp_path / 'source'), method='full')
