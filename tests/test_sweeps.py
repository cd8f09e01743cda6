"""Sweeps: grid expansion, run names, commands, the print/slurm launchers and the local launcher
(skip finished, resume interrupted, go on after a failure) on real tiny runs."""

import io
import json
import os
import pathlib
import shlex

import pytest

from adapters_jax import sweeps
from experiments.configs import houlsby_glue, lora_glue, mini_rotten_tomatoes
from tests.train.conftest import write_tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')


def test_parse_and_format_arg_round_trip():
  args = sweeps.parse_arg('smoke, method_options.size=8,learning_rate=3e-4,task=rte')
  assert args == {'smoke': True, 'method_options.size': 8, 'learning_rate': 3e-4, 'task': 'rte'}
  assert sweeps.parse_arg(sweeps.format_arg(args)) == args
  assert sweeps.parse_arg('') == {}
  assert sweeps.flag_names(args) == {'smoke'}
  assert sweeps.arg_overrides(args) == {'method_options.size': 8, 'learning_rate': 3e-4,
                                        'task': 'rte'}


def test_apply_overrides_creates_nested_fields_and_names_bad_ones():
  config = mini_rotten_tomatoes.get_config('method_options.size=8,learning_rate=1')
  assert config.method_options.size == 8
  assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
  with pytest.raises(KeyError, match='no field'):
    mini_rotten_tomatoes.get_config('learning_rat=1')
  with pytest.raises(ValueError, match='Unknown argument'):
    mini_rotten_tomatoes.get_config('smoky')


def test_grid_counts():
  assert len(sweeps.expand_grid(houlsby_glue.sweep())) == 8 * 5 * (3 + 3 * 3 * 2)  # 840
  assert len(sweeps.expand_grid(lora_glue.sweep())) == 8 * 5 * (1 + 3 * 2)          # 280
  assert len(sweeps.expand_grid(mini_rotten_tomatoes.sweep())) == 10 * 2 * 3         # 60
  rte = sweeps.expand_grid(houlsby_glue.sweep(), {'task': 'rte', 'method': 'houlsby',
                                                  'method_options.size': 64})
  assert len(rte) == 3 * 2 * 5
  # Numbers match by value: 3e-4 is 0.0003.
  assert len(sweeps.expand_grid(houlsby_glue.sweep(), sweeps.parse_arg('learning_rate=0.0003'))) \
      == 8 * 5 * 3 * 2


def test_duplicate_grid_points_are_an_error():
  with pytest.raises(ValueError, match='same'):
    sweeps.expand_grid([{'seed': 1, 'task': 'rte'}, {'task': 'rte', 'seed': 1}])


def test_product_merges_axes():
  grid = sweeps.product([{'task': 'rte'}], sweeps.sweep_values('seed', (0, 1)))
  assert grid == [{'task': 'rte', 'seed': 0}, {'task': 'rte', 'seed': 1}]


def test_run_names_are_readable_stable_and_unique():
  point = {'task': 'rte', 'method': 'houlsby', 'method_options.size': 64, 'learning_rate': 3e-4,
           'num_epochs': 20, 'seed': 1}
  name = sweeps.run_name(point)
  assert name.startswith('rte_houlsby_size64_lr0.0003_ep20_seed1_')
  assert name == sweeps.run_name(dict(point))
  # The hash does not depend on key order.
  assert name.rsplit('_', 1)[1] == sweeps.run_name(dict(reversed(point.items()))).rsplit('_', 1)[1]
  names = [sweeps.run_name(p) for p in houlsby_glue.sweep()]
  assert len(set(names)) == len(names)
  assert all(set(n) <= set('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-')
             for n in names)
  # A model path shows its last component; '_' inside a value becomes '-'.
  assert sweeps.run_name({'model': '/tmp/x/tiny_bert0/'}).startswith('tiny-bert0_')


def test_plan_puts_known_fields_in_flags_and_new_ones_in_the_config_arg(tmp_path):
  path = os.path.join(CONFIGS, 'mini_rotten_tomatoes.py')
  runs = sweeps.plan(path, str(tmp_path))
  assert len(runs) == 60
  houlsby8 = next(r for r in runs if r.overrides.get('method_options.size') == 8)
  assert f'--config={path}:method_options.size=8' in houlsby8.command
  assert '--config.method=houlsby' in houlsby8.command
  assert houlsby8.workdir == os.path.join(str(tmp_path), houlsby8.name)
  # Houlsby's config declares method_options.size, so there it is a typed flag.
  runs = sweeps.plan(os.path.join(CONFIGS, 'houlsby_glue.py') + ':smoke', str(tmp_path),
                     only={'task': 'rte', 'method_options.size': 8, 'seed': 0})
  assert len(runs) == 6
  assert '--config.method_options.size=8' in runs[0].command
  assert runs[0].command[3] == f'--config={CONFIGS}/houlsby_glue.py:smoke'
  sweeps.write_plan(runs, str(tmp_path), 'x.py')
  with open(tmp_path / sweeps.RUNS_FILE) as f:
    assert [r['name'] for r in json.load(f)['runs']] == [r.name for r in runs]


def test_print_launcher_prints_unfinished_runs(tmp_path):
  runs = sweeps.plan(os.path.join(CONFIGS, 'lora_glue.py'), str(tmp_path), only={'task': 'rte'})
  os.makedirs(runs[0].workdir)
  (tmp_path / runs[0].name / sweeps.RESULT_FILE).write_text('{}')
  out = io.StringIO()
  assert sweeps.print_commands(runs, out) == len(runs) - 1
  lines = out.getvalue().splitlines()
  assert len(lines) == len(runs) - 1
  assert shlex.split(lines[0])[1:4] == ['-m', 'experiments.train',
                                        f'--config={CONFIGS}/lora_glue.py']


def test_slurm_launcher_writes_array_script_and_table(tmp_path):
  runs = sweeps.plan(os.path.join(CONFIGS, 'houlsby_glue.py'), str(tmp_path), only={'task': 'rte'})
  script, table = sweeps.slurm_script(runs, str(tmp_path), job_name='houlsby',
                                      sbatch_options=['--gres=gpu:1', '--partition=a100'],
                                      max_parallel=8, workdir='/repo')
  text = pathlib.Path(script).read_text()
  assert text.startswith('#!/bin/bash\n')
  assert f'#SBATCH --array=0-{len(runs) - 1}%8' in text
  assert '#SBATCH --partition=a100' in text and '#SBATCH --job-name=houlsby' in text
  assert 'cd /repo' in text and 'SLURM_ARRAY_TASK_ID + 1' in text
  assert 'result.json" ]; then' in text  # finished runs exit at once
  rows = pathlib.Path(table).read_text().splitlines()
  assert len(rows) == len(runs)
  workdir, command = rows[3].split('\t')
  assert workdir == runs[3].workdir and shlex.split(command) == list(runs[3].command)


def test_runs_whose_workdir_holds_another_config_are_stale_and_not_run(tmp_path):
  runs = sweeps.plan(os.path.join(CONFIGS, 'mini_rotten_tomatoes.py'), str(tmp_path),
                     only={'method': 'head', 'seed': 0})
  fresh, changed = runs
  assert fresh.config['method'] == 'head' and fresh.config['max_length'] == 48
  for run, max_length in ((fresh, 48), (changed, 64)):
    os.makedirs(run.workdir)
    saved = dict(run.config, max_length=max_length, field_added_later=1)
    pathlib.Path(run.workdir, sweeps.CONFIG_FILE).write_text(json.dumps(saved))
    pathlib.Path(run.workdir, sweeps.RESULT_FILE).write_text('{}')
  assert fresh.stale_fields() == [] and changed.stale_fields() == ['max_length']
  lines = []
  outcome = sweeps.run_local(runs, 1, log=lines.append)
  assert outcome.skipped == [fresh.name] and outcome.stale == {changed.name: ['max_length']}
  assert any(line.startswith(f'STALE {changed.name}') for line in lines)


TINY_SWEEP = '''"""Tiny sweep for tests: python -m experiments.sweep --config=this.py."""
from adapters_jax import sweeps
from experiments.configs import quickstart

CONFIG_ARGS = ('',)


def get_config(arg=''):
  config = quickstart.get_config('smoke')
  config.model = {model!r}
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 2
  config.max_train_examples = 64
  config.max_eval_examples = 32
  config.tensorboard = False
  return sweeps.apply_overrides(config, sweeps.arg_overrides(sweeps.parse_arg(arg)))


def sweep():
  return [{{'method': 'lora', 'method_options.rank': 2, 'seed': 0}},
          {{'method': 'no-such-method', 'seed': 0}}]
'''


def _train_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if '"train"' in line]


def test_local_launcher_skips_finished_resumes_interrupted_and_survives_failures(tmp_path):
  model = str(write_tiny_bert(tmp_path / 'tiny_bert'))
  config_path = tmp_path / 'tiny_sweep.py'
  config_path.write_text(TINY_SWEEP.format(model=model))
  runs = sweeps.plan(str(config_path), str(tmp_path / 'sweep'))
  good, bad = runs
  lines = []
  outcome = sweeps.run_local(runs, 1, cwd=ROOT, poll_s=0.2, log=lines.append)
  assert outcome.succeeded == [good.name] and list(outcome.failed) == [bad.name]
  assert good.finished and not bad.finished
  with open(os.path.join(good.workdir, sweeps.RESULT_FILE)) as f:
    result = json.load(f)
  assert result['method'] == 'lora' and result['config']['method_options'] == {'rank': 2}
  assert 'Unknown method' in pathlib.Path(bad.workdir, sweeps.LOG_FILE).read_text()
  assert any(line.startswith('FAILED ' + bad.name) for line in lines)
  trained = _train_records(good.workdir)

  # Interrupted after its last checkpoint: the rerun resumes (no step is trained twice).
  os.remove(os.path.join(good.workdir, sweeps.RESULT_FILE))
  lines = []
  outcome = sweeps.run_local([good], 1, cwd=ROOT, poll_s=0.2, log=lines.append)
  assert outcome.succeeded == [good.name] and good.finished
  assert f'start {good.name} (resuming)' in lines
  assert _train_records(good.workdir) == trained

  # Finished: skipped without starting anything.
  lines = []
  outcome = sweeps.run_local([good], 1, cwd=ROOT, log=lines.append)
  assert outcome.skipped == [good.name] and not outcome.succeeded
  assert not any(line.startswith('start') for line in lines)


def test_count_gpus_reads_cuda_visible_devices(monkeypatch):
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,3')
  assert sweeps.count_gpus() == 3
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
  assert sweeps.count_gpus() == 0
