"""Sweeps: grid expansion, run names, commands, the print/slurm launchers, the local launcher
(skip finished, resume interrupted, go on after a failure, one run per GPU) on real tiny runs, and
runs that read other runs (fusion over the sweep's own adapters)."""

import io
import json
import os
import pathlib
import shlex
import stat
import subprocess
import sys

import pytest

from adapters_jax import sweeps
from adapters_jax.config import arguments, loading
from adapters_jax.config.schema import OPEN_FIELDS
from experiments.configs import (
  compacter_glue,
  houlsby_glue,
  lora_e2e,
  lora_glue,
  mini_rotten_tomatoes,
)
from tests.tiny_bert import write_tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, 'experiments', 'configs')
SWEEPABLE = sorted(name for name in os.listdir(CONFIGS) if name.endswith('.py') and 'def sweep('
                   in pathlib.Path(CONFIGS, name).read_text())


def _plan(name, sweep_dir, **kwargs):
  return sweeps.plan(os.path.join(CONFIGS, name), str(sweep_dir), open_fields=OPEN_FIELDS,
                     **kwargs)


def _cli(*args, env=None, timeout=300):
  env = dict(os.environ if env is None else env, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_config_arguments_with_key_value_items():
  config = mini_rotten_tomatoes.get_config('smoke,method_options.size=8,learning_rate=1')
  assert config.method_options.size == 8 and config.num_train_steps == 2
  assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
  with pytest.raises(loading.ConfigArgError, match="Did you mean 'learning_rate'"):
    mini_rotten_tomatoes.get_config('learning_rat=1')
  with pytest.raises(ValueError, match="'smoky' is not understood; valid parts"):
    mini_rotten_tomatoes.get_config('smoky')
  assert houlsby_glue.get_config('task=mrpc').task == 'mrpc'


def test_grid_counts():
  assert len(sweeps.expand_grid(houlsby_glue.sweep())) == 8 * 5 * (3 + 3 * 3 * 2)  # 840
  assert len(sweeps.expand_grid(lora_glue.sweep())) == 8 * 5 * (1 + 3 * 2)          # 280
  assert len(sweeps.expand_grid(mini_rotten_tomatoes.sweep())) == 10 * 2 * 3         # 60
  assert len(sweeps.expand_grid(compacter_glue.sweep())) == 8 * (1 + 5 * 3)          # 128
  assert len(sweeps.expand_grid(lora_e2e.sweep())) == 2 * 3 + 3  # LoRA: GPT-2 M, L; prefix: M
  rte = sweeps.expand_grid(houlsby_glue.sweep(), {'task': 'rte', 'method': 'houlsby',
                                                  'method_options.size': 64})
  assert len(rte) == 3 * 2 * 5
  # Numbers match by value: 3e-4 is 0.0003.
  assert len(sweeps.expand_grid(houlsby_glue.sweep(), arguments.parse_items('learning_rate=0.0003'))) \
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


def test_plan_passes_every_override_as_a_config_flag(tmp_path):
  runs = _plan('mini_rotten_tomatoes.py', tmp_path)
  assert len(runs) == 60
  houlsby8 = next(r for r in runs if r.overrides.get('method_options.size') == 8)
  assert houlsby8.command[3] == f'--config={CONFIGS}/mini_rotten_tomatoes.py'
  assert '--config.method_options.size=8' in houlsby8.command
  assert '--config.method=houlsby' in houlsby8.command
  assert houlsby8.config['method_options'] == {'size': 8}  # resolved from the flags' text
  assert houlsby8.workdir == os.path.join(str(tmp_path), houlsby8.name)
  runs = _plan('houlsby_glue.py:smoke', tmp_path, overrides=[('batch_size', '4')],
               only={'task': 'rte', 'method_options.size': 8, 'seed': 0})
  assert len(runs) == 6
  assert runs[0].command[3] == f'--config={CONFIGS}/houlsby_glue.py:smoke'
  assert runs[0].command[5:7] == ('--config.batch_size=4', '--config.task=rte')
  assert runs[0].config['batch_size'] == 4 and runs[0].config['max_length'] == 32
  sweeps.write_plan(runs, str(tmp_path), 'x.py')
  with open(tmp_path / sweeps.RUNS_FILE) as f:
    assert [r['name'] for r in json.load(f)['runs']] == [r.name for r in runs]


def test_a_grid_key_the_config_lacks_fails_at_planning(tmp_path):
  path = tmp_path / 'bad_grid.py'
  path.write_text('from experiments.configs.quickstart import get_config\n'
                  "def sweep():\n  return [{'learning_rat': 1e-3}]\n")
  with pytest.raises(loading.ConfigArgError, match="Did you mean 'learning_rate'"):
    sweeps.plan(str(path), str(tmp_path / 'sweep'), open_fields=OPEN_FIELDS)
  path.write_text('from experiments.configs.quickstart import get_config\n'
                  "def sweep():\n  return ['adapter-rte']\n")
  with pytest.raises(TypeError, match='dicts of config overrides'):
    sweeps.plan(str(path), str(tmp_path / 'sweep'))


def test_runs_whose_method_options_do_not_fit_fail_at_planning(tmp_path):
  from experiments.config_flag import check_method_options

  # Fusion options on the base config leak into the grid's adapter runs.
  with pytest.raises(ValueError, match=r"Run mnli_pfeiffer_.*Unknown option\(s\) \['adapter_dirs'"):
    _plan('fusion_glue.py:fusion-rte', tmp_path, check=check_method_options)
  assert len(_plan('fusion_glue.py', tmp_path, check=check_method_options)) == 16


@pytest.mark.slow
@pytest.mark.parametrize('name', SWEEPABLE)
def test_every_sweepable_config_plans_with_the_print_launcher(name, tmp_path):
  run = _cli('experiments.sweep', f'--config={CONFIGS}/{name}', f'--sweep_dir={tmp_path}',
             '--launcher=print')
  assert run.returncode == 0, run.stderr[-2000:]
  commands = [shlex.split(line) for line in run.stdout.splitlines() if not line.startswith('#')]
  with open(tmp_path / sweeps.RUNS_FILE) as f:
    planned = json.load(f)['runs']
  assert len(commands) == len(planned) > 0
  assert all(c[1:3] == ['-m', 'experiments.train'] for c in commands)
  assert {c[4] for c in commands} == {f'--workdir={r["workdir"]}' for r in planned}


def test_fusion_runs_train_over_the_sweeps_own_adapters_after_them(tmp_path):
  runs = _plan('mini_fusion.py', tmp_path)
  by_method = {}
  for run in runs:
    by_method.setdefault(run.config['method'], []).append(run)
  assert sorted(by_method) == ['full', 'fusion', 'pfeiffer']
  adapter_dirs = tuple(os.path.join(r.workdir, 'best') for r in by_method['pfeiffer'])
  for fusion in by_method['fusion']:
    assert fusion.command[2] == 'experiments.train'
    assert fusion.config['method_options']['adapter_dirs'] == list(adapter_dirs)
    assert fusion.config['method_options']['temperature'] == 1.0
    assert set(fusion.after) == {r.name for r in by_method['pfeiffer']}
  assert [len(w) for w in sweeps.waves(runs)] == [4, 2]
  # Printed wave by wave; --only keeps the adapters a fusion reads.
  only = _plan('mini_fusion.py', tmp_path, only={'method': 'fusion', 'task': 'rotten_tomatoes'})
  assert sorted(r.config['method'] for r in only) == ['fusion', 'pfeiffer', 'pfeiffer']
  out = io.StringIO()
  assert sweeps.print_commands(only, out) == 3
  lines = out.getvalue().splitlines()
  assert lines[2].startswith('# after the runs above') and 'method=fusion' in lines[3]
  # Slurm: a second array job, submitted after the first succeeded.
  submit, _ = sweeps.slurm_script(runs, str(tmp_path), workdir='/repo')
  text = pathlib.Path(submit).read_text()
  assert '--dependency=afterok:$JOB' in text and 'sweep_1.sbatch' in text
  assert len(pathlib.Path(tmp_path, 'slurm', 'runs_1.tsv').read_text().splitlines()) == 2


def test_print_launcher_prints_unfinished_runs(tmp_path):
  runs = _plan('lora_glue.py', tmp_path, only={'task': 'rte'})
  os.makedirs(runs[0].workdir)
  (tmp_path / runs[0].name / sweeps.RESULT_FILE).write_text('{}')
  out = io.StringIO()
  assert sweeps.print_commands(runs, out) == len(runs) - 1
  lines = out.getvalue().splitlines()
  assert len(lines) == len(runs) - 1
  assert shlex.split(lines[0])[1:4] == ['-m', 'experiments.train',
                                        f'--config={CONFIGS}/lora_glue.py']


def test_slurm_launcher_writes_array_script_and_table(tmp_path):
  runs = _plan('houlsby_glue.py', tmp_path, only={'task': 'rte'})
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


@pytest.mark.slow
def test_runs_whose_workdir_holds_another_config_are_stale_and_not_run(tmp_path):
  """A field missing from the saved config (added since) counts as its schema default: missing
  `sort_window` (the config keeps the default 50) is no change, missing `keep_checkpoints` (the
  config sets 1, the default is 2) is."""
  runs = _plan('mini_rotten_tomatoes.py', tmp_path, only={'method': 'head', 'seed': 0})
  fresh, changed = runs
  assert fresh.config['method'] == 'head' and fresh.config['max_length'] == 48
  assert fresh.config['sort_window'] == 50 and fresh.config['keep_checkpoints'] == 1
  for run, max_length, added_since in ((fresh, 48, 'sort_window'), (changed, 64, 'keep_checkpoints')):
    os.makedirs(run.workdir)
    saved = {k: v for k, v in run.config.items() if k != added_since}
    saved.update(max_length=max_length)
    pathlib.Path(run.workdir, sweeps.CONFIG_FILE).write_text(json.dumps(saved))
    pathlib.Path(run.workdir, sweeps.RESULT_FILE).write_text('{}')
  assert fresh.stale_fields() == []
  assert changed.stale_fields() == ['keep_checkpoints', 'max_length']
  lines = []
  outcome = sweeps.run_local(runs, 1, devices=sweeps.Devices('cpu'), log=lines.append)
  assert outcome.skipped == [fresh.name]
  assert outcome.stale == {changed.name: ['keep_checkpoints', 'max_length']}
  assert any(line.startswith(f'STALE {changed.name}') for line in lines)


TINY_SWEEP = '''"""Tiny sweep for tests: python -m experiments.sweep --config=this.py."""
from adapters_jax.config.arguments import parse_config_arg
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
  return parse_config_arg(arg).apply(config)


def sweep():
  return [{{'method': 'lora', 'method_options.rank': 2, 'seed': 0}},
          {{'method': 'no-such-method', 'seed': 0}}]
'''


CPU = sweeps.Devices('cpu')


def _train_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if '"train"' in line]


@pytest.mark.slow
def test_local_launcher_skips_finished_resumes_interrupted_and_survives_failures(tmp_path):
  model = str(write_tiny_bert(tmp_path / 'tiny_bert'))
  config_path = tmp_path / 'tiny_sweep.py'
  config_path.write_text(TINY_SWEEP.format(model=model))
  runs = sweeps.plan(str(config_path), str(tmp_path / 'sweep'), open_fields=OPEN_FIELDS)
  good, bad = runs
  lines = []
  outcome = sweeps.run_local(runs, 1, devices=CPU, cwd=ROOT, poll_s=0.2, log=lines.append)
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
  outcome = sweeps.run_local([good], 1, devices=CPU, cwd=ROOT, poll_s=0.2, log=lines.append)
  assert outcome.succeeded == [good.name] and good.finished
  assert f'start {good.name} (resuming)' in lines
  assert _train_records(good.workdir) == trained

  # Finished: skipped without starting anything.
  lines = []
  outcome = sweeps.run_local([good], 1, devices=CPU, cwd=ROOT, log=lines.append)
  assert outcome.skipped == [good.name] and not outcome.succeeded
  assert not any(line.startswith('start') for line in lines)


def test_count_gpus_reads_cuda_visible_devices(monkeypatch):
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1,3')
  assert sweeps.count_gpus() == 3
  monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
  assert sweeps.count_gpus() == 0


FAKE_TRAIN = '''#!{python}
"""Stands in for `python -m experiments.train`: records its GPU and time span, writes a result."""
import json, os, sys, time
workdir = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir='))
start = time.time()
time.sleep(0.5)
record = {{'device': os.environ.get('CUDA_VISIBLE_DEVICES'), 'start': start, 'end': time.time()}}
with open(os.path.join(workdir, 'device.json'), 'w') as f:
  json.dump(record, f)
with open(os.path.join(workdir, 'result.json'), 'w') as f:
  json.dump({{}}, f)
'''


def _fake_python(tmp_path):
  path = tmp_path / 'fake_python'
  path.write_text(FAKE_TRAIN.format(python=sys.executable))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


@pytest.mark.slow
def test_local_launcher_runs_one_run_per_gpu_each_seeing_only_its_gpu(tmp_path):
  sweep_dir = tmp_path / 'sweep'
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='3,5')  # a host with two GPUs, ids 3 and 5
  run = _cli('experiments.sweep', f'--config={CONFIGS}/mini_rotten_tomatoes.py',
             f'--sweep_dir={sweep_dir}', '--launcher=local', '--only=method=lora', '--parallel=4',
             f'--python={_fake_python(tmp_path)}', env=env)
  assert run.returncode == 0, run.stdout + run.stderr
  assert '--parallel=4 > 2 GPUs: one run per GPU at a time.' in run.stdout
  records = [json.loads(p.read_text()) for p in sweep_dir.glob('*/device.json')]
  assert len(records) == 6  # lora x 2 learning rates x 3 seeds
  assert {r['device'] for r in records} == {'3', '5'}
  for device in ('3', '5'):
    spans = sorted((r['start'], r['end']) for r in records if r['device'] == device)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False))


def test_tpu_hosts_refuse_parallel_runs_and_cpu_hosts_share():
  with pytest.raises(ValueError, match='TPU host.*--parallel=1'):
    sweeps.slots(sweeps.Devices('tpu', ('/dev/accel0', '/dev/accel1')), 2)
  assert sweeps.slots(sweeps.Devices('tpu', ('/dev/accel0',)), 1) == ([None], '')
  assert sweeps.slots(sweeps.Devices('cpu'), 3) == ([None] * 3, '')
  assert sweeps.slots(sweeps.Devices('gpu', ('0', '1', '2')), 0) == (['0', '1', '2'], '')
  assert sweeps.detect_devices({'CUDA_VISIBLE_DEVICES': '2,7'}) == sweeps.Devices('gpu', ('2', '7'))
  assert sweeps.detect_devices({'CUDA_VISIBLE_DEVICES': '', 'TPU_ACCELERATOR_TYPE': 'v4-8'}).kind \
      == 'tpu'


@pytest.mark.slow
def test_a_run_that_reads_a_failed_run_is_not_started(tmp_path):
  runs = _plan('mini_fusion.py', tmp_path, only={'method': 'fusion', 'task': 'rotten_tomatoes'})
  broken = [sweeps.Run(r.name, r.overrides, r.workdir, (sys.executable, '-c', 'raise SystemExit(3)'),
                       r.config, r.after) for r in runs]
  lines = []
  outcome = sweeps.run_local(broken, 2, devices=CPU, poll_s=0.1, log=lines.append)
  fusion = next(r for r in runs if r.after)
  assert sorted(outcome.failed.values()) == [3, 3]
  assert outcome.blocked == {fusion.name: fusion.after[0]}
  assert not os.path.exists(fusion.workdir)  # never started


def test_prompt_tuning_grid_has_the_papers_recipe(tmp_path):
  from experiments.config_flag import check_method_options

  runs = _plan('prompt_tuning_glue.py', tmp_path, check=check_method_options)
  configs = {(r.config['task'], r.config['method'],
              r.config['method_options'].get('length')): r.config for r in runs}
  assert len(configs) == len(runs) == 8 * (1 + 5)
  # Lester et al. 2021: lr 0.3, batch 32, 30k steps, sampled-vocabulary init, T5 LM-adapted.
  rte = configs[('rte', 'prompt_tuning', 20)]
  assert (rte['learning_rate'], rte['batch_size'], rte['num_train_steps']) == (0.3, 32, 30000)
  assert rte['method_options'] == {'length': 20, 'init': 'sample_vocab', 'combine': 'prefix'}
  assert rte['model'] == 'google/t5-base-lm-adapt' and rte['task_kind'] == 'seq2seq'
  assert not rte['train_head']
  assert configs[('rte', 'full', 100)]['learning_rate'] == 1e-4


def test_compacter_grid_has_the_authors_settings(tmp_path):
  from experiments.config_flag import check_method_options

  runs = _plan('compacter_glue.py', tmp_path, check=check_method_options)
  configs = {(r.config['task'], r.config['method'],
              r.config['method_options'].get('reduction_factor')): r.config for r in runs}
  assert len(configs) == len(runs) == 128
  # Written out from the authors' configs and scripts: MRPC is a 20-epoch task, 3,668 examples
  # in batches of 100 -> 36 steps per epoch, 720 steps, 500 of them warmup.
  mrpc = configs[('mrpc', 'houlsby', 16)]
  assert (mrpc['learning_rate'], mrpc['num_epochs'], mrpc['batch_size']) == (3e-4, 20, 100)
  assert mrpc['warmup_ratio'] == pytest.approx(500 / 720) and mrpc['eval_every_steps'] == 36
  assert mrpc['method_options'] == {'activation': 'gelu_tanh', 'size': None, 'reduction_factor': 16}
  # RTE is not among the scripts' 20-epoch tasks: 3 epochs of 24 steps, warmup all of them.
  rte = configs[('rte', 'compacter', 8)]
  assert (rte['learning_rate'], rte['num_epochs'], rte['warmup_ratio']) == (3e-3, 3, 1.0)
  mnli = configs[('mnli', 'compacter++', 32)]
  assert mnli['warmup_ratio'] == pytest.approx(500 / (3 * 3917))
  for config in configs.values():
    assert config['task_kind'] == 'seq2seq' and config['split_scheme'] == 'validation_as_test'
    assert config['model'] == 'google-t5/t5-base' and config['max_length'] == 128
  # PHM-Adapter (phm_adapters.json): n = 12 (`hypercomplex_division`), learning rate 3e-3.
  phm = configs[('cola', 'phm_adapter', 16)]
  assert phm['learning_rate'] == 3e-3 and phm['num_epochs'] == 20
  assert phm['method_options'] == {'activation': 'gelu_tanh', 'size': None, 'reduction_factor': 16, 'n': 12}
  assert {m for _, m, _ in configs} == {'full', 'houlsby', 'pfeiffer', 'phm_adapter', 'compacter',
                                        'compacter++'}
