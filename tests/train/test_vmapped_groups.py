"""Which runs of a sweep train together under `--launcher=vmap` (planning only, nothing trains)."""

import collections
import os

import pytest

from adapters_jax import sweeps
from adapters_jax.config.schema import OPEN_FIELDS
from adapters_jax.train import vmapped
from experiments.configs import quickstart

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       'experiments', 'configs')


def test_the_houlsby_table_groups_into_rows_of_rates_and_seeds(tmp_path):
  # Fails if grouping ignores a field that changes the program (size, epochs, method, task) or
  # splits runs that differ only in learning rate and seed.
  runs = sweeps.plan(os.path.join(CONFIGS, 'houlsby_glue.py'), str(tmp_path), open_fields=OPEN_FIELDS)
  groups = sweeps.group_runs(runs, vmapped.VMAP_FIELDS)
  # Per task: full fine-tuning, and houlsby at 3 sizes x 2 epoch counts; each 3 rates x 5 seeds.
  assert len(groups) == 8 * (1 + 3 * 2)
  rows = collections.Counter()
  for group in groups:
    assert len(group) == 15
    rows[len({(r.config['task'], r.config['method'], repr(r.config['method_options']),
               r.config['num_epochs']) for r in group})] += 1
    assert len({(r.config['learning_rate'], r.config['seed']) for r in group}) == 15
  assert rows == {1: len(groups)}
  split = sweeps.group_runs(runs, vmapped.VMAP_FIELDS, max_members=4)
  assert collections.Counter(len(g) for g in split) == {4: 3 * len(groups), 3: len(groups)}


def test_members_that_differ_in_more_than_rate_and_seed_are_refused():
  # Fails if a group could mix batch sizes (other shapes) or other schedules silently.
  a, b = quickstart.get_config(), quickstart.get_config()
  b.learning_rate, b.seed = 3e-4, 7
  vmapped.check_group([a, b])
  b.batch_size, b.warmup_ratio = 8, 0.2
  with pytest.raises(ValueError, match=r"differ too: \['batch_size', 'warmup_ratio'\]"):
    vmapped.check_group([a, b])
