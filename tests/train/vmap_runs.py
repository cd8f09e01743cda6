"""A sweepable config file for vmapped-group tests, and helpers that compare two runs' files."""

import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from adapters_jax.checkpoint import save
from adapters_jax.checkpoint.training import TrainCheckpoints
from adapters_jax.config import loading
from adapters_jax.train.metrics_log import read_metrics

# One length bucket (max_length 16 = the only bucket) keeps every batch the same shape, so members
# of other seeds draw the dropout masks of their separate runs. Checkpoints every 2 steps.
CONFIG_TEMPLATE = '''
from experiments.configs import quickstart

def get_config(arg=''):
  config = quickstart.get_config('smoke')
  config.model = {model!r}
  config.max_length = 16
  config.checkpoint_every_steps = 2
  config.tensorboard = False
  return config

def sweep():
  return {grid!r}
'''


def write_sweep_config(directory: pathlib.Path, model_dir: str, grid: list[dict]) -> str:
  path = directory / 'vmap_sweep_config.py'
  path.write_text(CONFIG_TEMPLATE.format(model=model_dir, grid=grid))
  return str(path)


def member_config(config_path: str, **overrides):
  config = loading.get_config(loading.load_config_module(config_path))
  for key, value in overrides.items():
    setattr(config, key, value)
  return config


def result(workdir) -> dict:
  with open(os.path.join(workdir, 'result.json')) as f:
    return json.load(f)


def best_leaves(workdir) -> dict[str, np.ndarray]:
  return save.load_leaves(os.path.join(workdir, 'best'))


def assert_same_leaves(a: dict, b: dict, rtol=2e-5, atol=2e-6) -> None:
  assert sorted(a) == sorted(b)
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=rtol, atol=atol, err_msg=path)


def assert_same_run(vmapped, separate, rtol=2e-5) -> None:
  """Same best step, validation and test metrics, train/eval records and best adapter leaves."""
  got, want = result(vmapped), result(separate)
  assert got['best_step'] == want['best_step']
  for key in ('validation_metrics', 'test_metrics'):
    for split, metrics in want[key].items():
      for name, value in metrics.items():
        np.testing.assert_allclose(got[key][split][name], value, rtol=rtol, err_msg=name)
  records_got = read_metrics(str(vmapped), timings=False)
  records_want = read_metrics(str(separate), timings=False)
  assert [(r['step'], r['split']) for r in records_got] == [(r['step'], r['split'])
                                                            for r in records_want]
  for r_got, r_want in zip(records_got, records_want, strict=True):
    for name, value in r_want.items():
      if isinstance(value, str):
        assert r_got[name] == value
        continue
      np.testing.assert_allclose(r_got[name], value, rtol=1e-4, atol=1e-6,
                                 err_msg=f'{name} at {r_want["step"]} {r_want["split"]}')
  assert_same_leaves(best_leaves(vmapped), best_leaves(separate))


def latest_state(workdir, like_workdir=None) -> tuple[int, dict[str, np.ndarray]]:
  """The newest training checkpoint's step and its state leaves by path. A checkpoint saved over
  other devices (several processes) restores onto this process's device in the structure of
  `like_workdir`'s newest restore."""
  abstract = None
  if like_workdir is not None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            _restore(like_workdir)[1])
  step, state = _restore(workdir, abstract)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return step, {jax.tree_util.keystr(path): np.asarray(v) for path, v in flat}


def _restore(workdir, abstract=None):
  checkpoints = TrainCheckpoints(os.path.join(workdir, 'checkpoints'))
  try:
    step = checkpoints.latest_step()
    restored = checkpoints.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  finally:
    checkpoints.close()
  return step, restored['state']
