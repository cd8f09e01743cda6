"""Every shell command in README.md runs in a test, the way a user runs it.

Each command of README.md's shell blocks must have an entry in COMMANDS (keyed by the command's
text): run here in a subprocess, in a fresh directory (one per group of commands, so that groups
run in parallel), shortened where it would train long or needs the network (a `:smoke` config, a
tiny local model, GLUE files prepared offline by tfds's builder);
or named as run by another test (which must exist). A README command without an entry fails
`test_every_readme_command_has_an_entry` with what to add. The commands that need a trained run
share its directory: quickstart -> predict/export, the GLUE LoRA run -> PEFT export -> import; the
fusion run and the composition benchmark share the two adapter runs they read.
"""

import json
import pathlib
import re
import subprocess
import sys
import time

import pytest

from tests.readme_commands import (
    ROOT,
    Command,
    Covered,
    MakeTarget,
    Run,
    Sandbox,
    extract_commands,
    join,
    make_recipe,
    set_flag,
    smoke_config,
    source_of_test,
    tokens,
    unknown_command_message,
)

PY = '.venv/bin/python'
QUICKSTART = (f'{PY} -m experiments.train --config=experiments/configs/quickstart.py '
              '--workdir=workdirs/quickstart')
GLUE_LORA = (f'{PY} -m experiments.train --config=experiments/configs/glue.py:rte --workdir=workdirs/rte '
             '--config.method=lora --config.learning_rate=5e-4 --config.model=bert-base-uncased')
LOCAL = (f'{PY} -m experiments.train --config=experiments/configs/glue.py:local --workdir=workdirs/mine '
         '--config.local_task.paths.train=train.csv --config.local_task.paths.validation=dev.csv '
         '--config.local_task.encoding=latin-1 --config.local_task.label_names=\'("neg","pos")\' '
         '--config.method_options.size=8')
PREDICT = f'echo "A quiet, devastating film." | {PY} -m experiments.predict --workdir=workdirs/quickstart'
EXPORT_ADAPTERS = (f'{PY} -m experiments.export --workdir=workdirs/quickstart --format=adapters '
                   '--out=exports/rt')
EXPORT_PEFT = f'{PY} -m experiments.export --workdir=workdirs/lora_run --format=peft --out=exports/lora'
EXPORT_MERGED = (f'{PY} -m experiments.export --workdir=workdirs/lora_run --format=merged '
                 '--out=exports/lora_merged')
IMPORT_PEFT = (f'{PY} -m experiments.import_adapter --from=exports/lora --format=peft --model=roberta-base '
               '--out=imported/lora')
SWEEP = (f'{PY} -m experiments.sweep --config=experiments/configs/houlsby_glue.py --sweep_dir=sweeps/houlsby '
         '--launcher=slurm')


def _result(sandbox, workdir):
  return json.loads((sandbox.dir / workdir / 'result.json').read_text())


def _tiny_bert(sandbox) -> str:
  if 'tiny_bert' not in sandbox.files:
    from tests.tiny_bert import write_tiny_bert
    sandbox.files['tiny_bert'] = str(write_tiny_bert(sandbox.dir / 'tiny_bert'))
  return sandbox.files['tiny_bert']


def _glue_rte(sandbox) -> str:
  """GLUE RTE prepared offline by tfds's builder from GLUE-layout files (scripts/glue_files.py)."""
  if 'glue' not in sandbox.files:
    import importlib.util
    spec = importlib.util.spec_from_file_location('glue_files', ROOT / 'scripts' / 'glue_files.py')
    glue_files = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(glue_files)
    files = glue_files.write_glue_files(sandbox.dir / 'glue_files', ['rte'])
    glue_files.prepare_glue('rte', files, sandbox.dir / 'tfds')
    sandbox.files['glue'] = str(sandbox.dir / 'tfds')
  return sandbox.files['glue']


def _local_files(sandbox) -> None:
  """train.csv / dev.csv in latin-1 (an 'é' that is not UTF-8), as the command's flags say."""
  rows = ['text,label'] + [f'{"un film épatant" if i % 2 else "a dull film"} {i},{i % 2}' for i in range(24)]
  for name in ('train.csv', 'dev.csv'):
    (sandbox.dir / name).write_bytes('\n'.join(rows).encode('latin-1'))


def _shorten_glue(words, sandbox):
  words = smoke_config(words)
  words = set_flag(words, '--config.model', _tiny_bert(sandbox))  # bert-base-uncased needs the hub
  words = set_flag(words, '--config.batch_size', '4')  # the prepared files hold 6 rows per split
  return set_flag(words, '--config.data_dir', _glue_rte(sandbox))  # GLUE needs a download


def _shorten_local(words, sandbox):
  _local_files(sandbox)
  return smoke_config(words)


def _check_quickstart(proc, sandbox):
  result = _result(sandbox, 'workdirs/quickstart')
  assert (result['task'], result['method'], result['model']) == ('rotten_tomatoes', 'houlsby', 'minilm-l6')
  assert (sandbox.dir / 'workdirs/quickstart/best').is_dir()


def _check_glue(proc, sandbox):
  result = _result(sandbox, 'workdirs/rte')
  assert (result['task'], result['method']) == ('rte', 'lora')


def _check_local(proc, sandbox):
  result = _result(sandbox, 'workdirs/mine')
  assert result['task'] == 'local' and result['config']['method_options'] == {'size': 8}


def _check_predict(proc, sandbox):
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{')]
  assert len(rows) == 1, proc.stdout
  assert rows[0]['label'] in rows[0]['probabilities']
  assert sum(rows[0]['probabilities'].values()) == pytest.approx(1.0, abs=1e-4)


def _check_files(*paths):
  def check(proc, sandbox):
    missing = [p for p in paths if not (sandbox.dir / p).exists()]
    assert not missing, f'not written: {missing}; stdout: {proc.stdout[-2000:]}'
  return check


def _shorten_bench(words, sandbox):
  anchors = '--anchors' in words
  words = set_flag(words, '--shapes', '1x8' if anchors else '2x16')
  if _flag_value(words, '--steps') == '0':  # compile time and memory only: a tiny model, one method
    return set_flag(set_flag(words, '--model', 'tiny'), '--methods', 'houlsby')
  words = set_flag(words, '--steps', '1')
  words = set_flag(words, '--warmup', '0')
  words = set_flag(words, '--rounds', '1')
  if anchors:  # the anchors exist for MiniLM only; the test's Python has torch, adapters, peft
    words = set_flag(words, '--methods', 'lora')
    words = set_flag(words, '--anchor_python', sys.executable)
    return words if '--no-memory' in words else words + ['--no-memory']
  words = set_flag(words, '--model', 'tiny')
  if (_flag_value(words, '--methods') or 'all') == 'all':
    words = set_flag(words, '--methods', 'full,houlsby')
  return words if '--no-memory' in words else words + ['--no-memory']


def _flag_value(words, flag):
  """The value of `flag` in `words` (`--f=v` or `--f v`), None when absent."""
  for i, word in enumerate(words):
    if word.startswith(flag + '='):
      return word.split('=', 1)[1]
    if word == flag and i + 1 < len(words):
      return words[i + 1]
  return None


def _mini_fusion_adapters(sandbox) -> None:
  """The two Pfeiffer adapter runs the fusion and the composition benchmark read by default
  (`workdirs/mini_fusion/adapter-<task>`, mini_fusion.py's first stage), on the tiny BERT."""
  if 'mini_fusion' in sandbox.files:
    return
  for task in ('rotten_tomatoes', 'tweet_sentiment'):
    proc = sandbox.run(join([PY, '-m', 'experiments.train',
                             f'--config=experiments/configs/mini_fusion.py:adapter-{task},smoke',
                             f'--workdir=workdirs/mini_fusion/adapter-{task}',
                             f'--config.model={_tiny_bert(sandbox)}']), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2500:]
  sandbox.files['mini_fusion'] = 'workdirs/mini_fusion'


def _shorten_fusion(words, sandbox):
  _mini_fusion_adapters(sandbox)
  return set_flag(smoke_config(words), '--config.model', _tiny_bert(sandbox))


def _shorten_composition(words, sandbox):
  """The README's command on its default adapters (the mini_fusion adapter runs), small sizes."""
  _mini_fusion_adapters(sandbox)
  for flag, value in (('--batch_size', '4'), ('--length', '16'), ('--repeats', '1'),
                      ('--eval_examples', '8')):
    words = set_flag(words, flag, value)
  return words


BENCH = f'{PY} scripts/bench.py'
COMMANDS = {
    'make demo': MakeTarget('demo'),
    'make test': MakeTarget('test'),
    QUICKSTART: Run(shorten=lambda w, s: smoke_config(w), check=_check_quickstart),
    GLUE_LORA: Run(shorten=_shorten_glue, check=_check_glue),
    LOCAL: Run(shorten=_shorten_local, check=_check_local),
    PREDICT: Run(needs=(QUICKSTART,), check=_check_predict),
    f'{PY} -m experiments.train --config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes '
    '--workdir=workdirs/mini_fusion/fusion-rotten_tomatoes': Run(
        shorten=_shorten_fusion, sandbox='mini_fusion', check=lambda proc, sandbox: _assert_glob(
            sandbox, 'workdirs/mini_fusion/fusion-rotten_tomatoes/result.json')),
    f'{PY} -m experiments.predict --workdir=workdirs/rt,workdirs/tweets --adapter_column --input=rows.tsv':
        Covered('tests/splicing/test_fusion_layers.py::test_multi_predictor_per_row_column_and_cli',
                ('experiments.predict', '--adapter_column'),
                'needs two runs on two tasks; that test trains them and reads stdin instead of --input'),
    EXPORT_ADAPTERS: Run(needs=(QUICKSTART,), check=_check_files(
        'exports/rt/adapter_config.json', 'exports/rt/head_config.json')),
    EXPORT_PEFT: Run(needs=(GLUE_LORA,), shorten=lambda w, s: set_flag(w, '--workdir', 'workdirs/rte'),
                     check=_check_files('exports/lora/adapter_config.json',
                                        'exports/lora/adapter_model.safetensors')),
    EXPORT_MERGED: Run(needs=(GLUE_LORA,), shorten=lambda w, s: set_flag(w, '--workdir', 'workdirs/rte'),
                       check=_check_files('exports/lora_merged/config.json',
                                          'exports/lora_merged/model.safetensors')),
    IMPORT_PEFT: Run(needs=(EXPORT_PEFT,), shorten=lambda w, s: set_flag(w, '--model', _tiny_bert(s)),
                     check=_check_files('imported/lora')),
    SWEEP: Run(check=lambda proc, sandbox: _assert_glob(sandbox, 'sweeps/houlsby/**/*.sbatch')),
    f'{PY} -m experiments.report --sweep_dir=sweeps/houlsby --config=experiments/configs/houlsby_glue.py':
        Covered('tests/data/test_glue_builder.py::test_train_and_report_on_builder_prepared_glue',
                ('experiments.report', '--sweep_dir', 'houlsby_glue.py'),
                'needs finished runs; that test trains one on builder-prepared GLUE RTE and reports it'),
    f'{BENCH} --shapes 8x128,32x64 --out bench.json': Run(shorten=_shorten_bench,
                                                         check=_check_files('bench.json')),
    'bash scripts/setup_anchor.sh': Covered(
        'tests/scripts/test_bench.py::test_missing_anchor_environment_names_the_setup_command',
        ('bash scripts/setup_anchor.sh',),
        'pip-installs torch into .anchor-venv; the tests run the anchors in their own Python'),
    f'{BENCH} --shapes 8x128 --anchors --rounds 3': Run(shorten=_shorten_bench),
    f'{BENCH} --model large --methods houlsby --scan_layers --steps 0': Run(shorten=_shorten_bench),
    f'{BENCH} --methods houlsby,houlsby@all_positions --no-memory': Run(shorten=_shorten_bench),
    f'{BENCH} --methods full,houlsby,houlsby@adapterdrop --no-memory': Run(shorten=_shorten_bench),
    f'{PY} scripts/bench_composition.py': Run(shorten=_shorten_composition, sandbox='mini_fusion'),
    f'{PY} scripts/memory_estimate.py --model large --batch 32 --length 128': Run(
        shorten=lambda w, s: set_flag(set_flag(set_flag(w, '--model', 'tiny'), '--batch', '2'),
                                      '--length', '16')),
    f'{PY} scripts/make_random_t5.py --out=workdirs/random_t5': Covered(
        'tests/train/test_seq2seq.py::test_make_random_t5_script_writes_a_loadable_t5_with_the_packaged_tokenizer',
        ('scripts/make_random_t5.py', '--out='),
        'that test runs the script into its own directory and loads what it wrote'),
    (f'{PY} -m experiments.train --config=experiments/configs/mini_t5_rotten_tomatoes.py '
     '--workdir=workdirs/mini_t5'):
        Covered('tests/train/test_seq2seq.py::test_cli_trains_a_t5_adapter_and_reports_generation_metrics',
                ('experiments.train', 'mini_t5_rotten_tomatoes.py:smoke'),
                'trains minutes on a CPU; that test runs the config in its smoke form on a random T5'),
    f'{PY} -m experiments.make_random_decoder --out_dir=workdirs/tiny_llama': Run(
        check=_check_files('workdirs/tiny_llama/config.json', 'workdirs/tiny_llama/model.safetensors')),
    f'{PY} -m experiments.train --config=experiments/configs/mini_lora_lm.py --workdir=workdirs/mini_lm':
        Covered('tests/train/test_causal_lm_cli.py::test_lora_on_a_tiny_llama_trains_through_the_cli',
                ('experiments.train', 'mini_lora_lm.py:smoke'),
                'trains minutes on a CPU; that test runs the config in its smoke form on a tiny Llama'),
    f'echo "A quiet, devastating film." | {PY} -m experiments.predict --workdir=workdirs/mini_t5':
        Covered('tests/predict/test_predict_generate.py::'
                'test_t5_run_answers_like_a_recomputed_greedy_decode_of_the_prefixed_input',
                ('experiments.predict', '--workdir=', 'A quiet, devastating film.'),
                'that test predicts through the CLI with a T5 run it trains in two steps'),
    (f'echo "name[The Eagle], food[French]" | {PY} -m experiments.predict --workdir=workdirs/mini_lm '
     '--max_new_tokens=20'):
        Covered('tests/predict/test_predict_generate.py::'
                'test_decoder_run_continues_e2e_prompts_greedily_and_stops_at_eos',
                ('experiments.predict', '--max_new_tokens=', 'name[The Eagle], food[French]'),
                'that test predicts through the CLI with a decoder run it trains in two steps'),
    f'{PY} scripts/bench_lm.py --models t5,llama --rounds 3 --steps 5 --out bench_lm.json': Covered(
        'tests/scripts/test_bench.py::test_lm_anchors_run_through_bench_lm_on_our_shapes',
        ('bench_lm', 'run_anchor'),
        'needs the PyTorch anchor environment; that test runs both sides through bench_lm on small shapes'),
    (f'{PY} scripts/memory_estimate.py --model llama-7b --fake_devices 8 --sharding fsdp --batch 8 '
     '--length 2048 --options scan+remat --dtype bfloat16 --frozen_dtype bfloat16'): Covered(
        'tests/models/test_llama_7b_lowering.py::test_llama_7b_lora_step_fits_an_80gb_device_with_8_way_fsdp',
        ('scripts/memory_estimate.py', 'llama-7b', '--fake_devices', '--sharding', 'fsdp'),
        'that test runs the same command and checks the estimate against an 80 GB device'),
    (f'{PY} -m experiments.train --config=experiments/configs/mini_lora_lm.py '
     '--workdir=workdirs/mini_qlm --config.quantize=nf4'): Covered(
        'tests/quantization/test_qlora_cli.py::test_lora_on_an_nf4_llama_trains_saves_adapters_only_and_predicts',
        ('experiments.train', 'mini_lora_lm.py:smoke', '--config.quantize=nf4'),
        'trains minutes on a CPU; that test runs the config in its smoke form with an NF4 base'),
    (f'{PY} scripts/memory_estimate.py --model llama-3-8b --fake_devices 8 --sharding fsdp --batch 8 '
     '--length 2048 --options scan+remat --quantize none,nf4'): Covered(
        'tests/quantization/test_qlora_memory.py::test_nf4_llama_3_8b_base_takes_under_30_percent_of_bfloat16',
        ('scripts/memory_estimate.py', 'llama-3-8b', '--fake_devices', '--quantize', 'none,nf4'),
        'that test runs the same command and checks the NF4 base against the bfloat16 one'),
    'bash scripts/accelerator_check.sh results.json': Covered(
        'tests/scripts/test_accelerator_check.py::test_tiny_accelerator_check_writes_throughput_flops_and_glue_json',
        ('scripts/accelerator_check.sh', '--tiny'),
        'BERT-large on a GPU; that test runs the same script in its --tiny form on the CPU'),
}


def _assert_glob(sandbox, pattern):
  assert list(sandbox.dir.glob(pattern)), f'nothing matches {pattern}'


def readme() -> list[Command]:
  return extract_commands((ROOT / 'README.md').read_text())


def test_extraction_joins_continuations_drops_comments_and_reads_only_shell_blocks():
  markdown = '\n'.join([
      'text `python -m not.this`', '```python', 'x = 1  # python', '```',
      '```bash', '# a comment line', 'echo "a # not a comment" | cat  # a comment', 'python -m a \\',
      '    --flag=1 \\', '    --other   2', '```', '```console', '$ make demo', 'output line', '```'])
  assert extract_commands(markdown) == [
      Command(7, 'echo "a # not a comment" | cat'), Command(8, 'python -m a --flag=1 --other 2'),
      Command(13, 'make demo')]
  with pytest.raises(ValueError, match='not closed'):
    extract_commands('```bash\nmake demo\n')


@pytest.mark.slow
def test_shortening_helpers_set_flags_in_either_form():
  assert set_flag(['p', '--model', 'large', '--x'], '--model', 'tiny') == ['p', '--model=tiny', '--x']
  assert set_flag(['p', '--model=large'], '--model', None) == ['p']
  assert set_flag(['p'], '--steps', '1') == ['p', '--steps=1']
  assert smoke_config(['--config=a.py', '--config=b.py:rte']) == ['--config=a.py:smoke',
                                                                    '--config=b.py:rte,smoke']
  assert join(tokens('echo "a b" | x --y=1')) == "echo 'a b' | x --y=1"
  words = tokens('.venv/bin/python scripts/bench.py --methods houlsby,houlsby@all_positions --no-memory')
  assert _shorten_bench(words, None) == [
      '.venv/bin/python', 'scripts/bench.py', '--methods', 'houlsby,houlsby@all_positions', '--no-memory',
      '--shapes=2x16', '--steps=1', '--warmup=0', '--rounds=1', '--model=tiny']


def test_unknown_command_message_names_the_line_and_what_to_add():
  message = unknown_command_message(Command(42, 'python -m experiments.new_thing'))
  assert 'README.md line 42' in message and 'COMMANDS in tests/test_readme_commands.py' in message
  assert ':smoke' in message and 'Covered(' in message


def test_every_readme_command_has_an_entry_and_every_entry_is_in_the_readme():
  commands = readme()
  assert len(commands) >= 15
  unknown = [unknown_command_message(c) for c in commands if c.text not in COMMANDS]
  assert not unknown, '\n'.join(unknown)
  stale = sorted(set(COMMANDS) - {c.text for c in commands})
  assert not stale, f'COMMANDS entries no longer in README.md (remove or update them): {stale}'


def test_covered_commands_name_existing_tests_that_run_them():
  for text, entry in COMMANDS.items():
    if isinstance(entry, Covered):
      source_of_test(entry.test)  # raises if the file or function does not exist
      source = (ROOT / entry.test.partition('::')[0]).read_text()
      missing = [f for f in entry.contains if f not in source]
      assert not missing, f'{entry.test} does not run `{text}`: it lacks {missing}'


def test_make_targets_run_a_readme_command_or_this_suite():
  assert make_recipe('demo') == [QUICKSTART]
  recipe = make_recipe('test')
  assert len(recipe) == 1 and recipe[0].startswith(f'{PY} -m pytest') and recipe[0].endswith(' tests')


def _root(text: str) -> str:
  """The command whose sandbox `text` runs in: its own group's name, or the first command it needs."""
  entry = COMMANDS[text]
  return entry.sandbox or (_root(entry.needs[0]) if entry.needs else text)


def sandbox_groups() -> dict[str, list[str]]:
  """README commands to run, grouped by sandbox, each group in README order."""
  groups: dict[str, list[str]] = {}
  for command in readme():
    entry = COMMANDS.get(command.text)
    if isinstance(entry, Run):
      groups.setdefault(_root(command.text), []).append(command.text)
  return groups


def _group_id(root: str) -> str:
  """A short test id: `-m-experiments.train-quickstart.py-workdir-workdirs-quickstart` and such."""
  text = root.replace(PY, '').replace('--config=experiments/configs/', '').replace('--', '')
  return re.sub(r'[^A-Za-z0-9_.@]+', '-', text).strip('-')[:60]


def test_sandbox_groups_hold_each_run_command_once_after_what_it_needs():
  groups = sandbox_groups()
  runs = [text for text, entry in COMMANDS.items() if isinstance(entry, Run)]
  assert sorted(text for texts in groups.values() for text in texts) == sorted(runs)
  for texts in groups.values():
    for text in texts:
      assert all(need in texts for need in COMMANDS[text].needs), text
  assert len(groups) > 1 and _root(PREDICT) == _root(EXPORT_ADAPTERS) == QUICKSTART
  assert _root(IMPORT_PEFT) == GLUE_LORA and _root(f'{PY} scripts/bench_composition.py') == 'mini_fusion'


@pytest.mark.slow
@pytest.mark.parametrize('root', sorted(sandbox_groups()), ids=_group_id)
def test_readme_commands_run(root, tmp_path):
  """The Run commands of one sandbox group, shortened; a command that reads a run's files runs
  after it."""
  sandbox = Sandbox(tmp_path)
  failures = []

  def run(text):
    if text in sandbox.done:
      return sandbox.done[text]
    entry = COMMANDS[text]
    for need in entry.needs:
      if run(need).returncode != 0:
        failures.append(f'`{text}`: skipped, `{need}` failed')
        sandbox.done[text] = subprocess.CompletedProcess(text, 1)
        return sandbox.done[text]
    words = entry.shorten(tokens(text), sandbox)
    start = time.perf_counter()
    proc = sandbox.run(join(words), entry.timeout)
    print(f'{time.perf_counter() - start:6.1f} s  rc {proc.returncode}  {join(words)}', flush=True)
    sandbox.done[text] = proc
    if proc.returncode != 0:
      failures.append(f'`{join(words)}` exited {proc.returncode}:\n{proc.stderr[-2500:]}')
      return proc
    try:
      entry.check(proc, sandbox)
    except AssertionError as error:
      failures.append(f'`{join(words)}`: {error}')
    return proc

  for text in sandbox_groups()[root]:
    run(text)
  assert not failures, '\n\n'.join(failures)


def test_the_readme_names_paths_that_exist():
  """Scripts and configs named by README commands exist in the checkout."""
  for command in readme():
    for word in tokens(command.text):
      path = word.split('=', 1)[-1].split(':', 1)[0]
      if path.startswith(('scripts/', 'experiments/configs/')):
        assert pathlib.Path(ROOT / path).exists(), f'README.md line {command.line}: no file {path}'
