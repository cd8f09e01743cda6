"""README.md's shell commands as data: extraction, how each is shortened, and the sandbox it runs in.

`extract_commands(markdown)` returns every command of the ```bash/sh/shell/console blocks (backslash
continuations joined, comments dropped, a console's `$ ` prompt removed) with its line number.
`tests/test_readme_commands.py` holds the table that says, for each command, how a test runs it:

  Run(...)      run in a subprocess in a fresh directory, with flags changed to shorten it
                (a `:smoke` config argument, a tiny model, one step); `needs` names the commands
                whose outputs it reads (a trained workdir), run first.
  Covered(...)  run verbatim (up to paths) by another test, named `tests/path.py::test_name`; the
                test must exist and its source must contain the given fragments.
  MakeTarget()  a Makefile target whose recipe must be one of the README commands (or pytest).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = ('bash', 'sh', 'shell', 'console', 'zsh')
_FENCE = re.compile(r'^\s*(```+|~~~+)\s*([\w+-]*)')


@dataclasses.dataclass(frozen=True)
class Command:
  line: int   # 1-based line of README.md where the command starts
  text: str   # the command, continuations joined, comment dropped, whitespace collapsed


def strip_comment(line: str) -> str:
  """`line` without a trailing shell comment (a `#` outside quotes, at a word's start)."""
  quote = None
  for i, char in enumerate(line):
    if quote:
      if char == quote:
        quote = None
      elif char == '\\' and quote == '"':
        continue
    elif char in '\'"':
      quote = char
    elif char == '#' and (i == 0 or line[i - 1].isspace()):
      return line[:i].rstrip()
  return line.rstrip()


def extract_commands(markdown: str) -> list[Command]:
  """Every shell command in `markdown`'s shell code blocks, in order."""
  commands, fence, language = [], None, ''
  pending, start = '', 0
  for number, line in enumerate(markdown.splitlines(), start=1):
    match = _FENCE.match(line)
    if fence is None:
      if match:
        fence, language = match.group(1), match.group(2).lower()
      continue
    if match and match.group(1).startswith(fence) and not match.group(2):
      if pending.strip():
        raise ValueError(f'README.md line {start}: a command ends in a backslash at the block\'s end.')
      fence = None
      continue
    if language not in SHELL_LANGUAGES:
      continue
    if language == 'console':
      if not pending and not line.lstrip().startswith('$ '):
        continue  # program output
      line = line.lstrip().removeprefix('$ ') if not pending else line
    code = strip_comment(line)
    if not pending:
      start = number
    if code.endswith('\\'):
      pending += code[:-1] + ' '
      continue
    text = ' '.join((pending + code).split())
    pending = ''
    if text:
      commands.append(Command(start, text))
  if fence is not None:
    raise ValueError('README.md: a code block is not closed.')
  return commands


def tokens(text: str) -> list[str]:
  """Shell words of `text`; `|`, `;`, `&&` and redirections are words of their own."""
  lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def join(words: list[str]) -> str:
  punctuation = {'|', '||', '&&', ';', '>', '>>', '<', '&'}
  return ' '.join(w if w in punctuation else shlex.quote(w) for w in words)


def set_flag(words: list[str], flag: str, value: str | None) -> list[str]:
  """`words` with `flag` set to `value` (`--f=v` or `--f v` replaced, else appended; None: removed)."""
  out, i, found = [], 0, False
  while i < len(words):
    word = words[i]
    if word == flag or word.startswith(flag + '='):
      found = True
      skip_next = word == flag and i + 1 < len(words) and not words[i + 1].startswith('-')
      i += 2 if skip_next else 1
      if value is not None:
        out.append(f'{flag}={value}')
      continue
    out.append(word)
    i += 1
  if not found and value is not None:
    out.append(f'{flag}={value}')
  return out


def smoke_config(words: list[str]) -> list[str]:
  """`--config=FILE[:ARG]` -> `--config=FILE:smoke` or `FILE:ARG,smoke` (the configs' test size)."""
  out = []
  for word in words:
    if word.startswith('--config='):
      path, _, arg = word.removeprefix('--config=').partition(':')
      word = f'--config={path}:{arg + "," if arg else ""}smoke'
    out.append(word)
  return out


@dataclasses.dataclass(frozen=True)
class Run:
  """How to run a README command, shortened. `shorten` maps its words to the words run."""

  shorten: Callable[[list[str], Sandbox], list[str]] = lambda words, sandbox: words
  needs: tuple[str, ...] = ()
  check: Callable[[subprocess.CompletedProcess, Sandbox], None] = lambda proc, sandbox: None
  timeout: int = 300
  sandbox: str = ''  # commands naming the same sandbox share one (and the inputs made there)


@dataclasses.dataclass(frozen=True)
class Covered:
  """A README command another test runs verbatim (up to file paths)."""

  test: str                 # tests/path.py::test_name
  contains: tuple[str, ...]  # fragments of the command that test's source must hold
  why: str


@dataclasses.dataclass(frozen=True)
class MakeTarget:
  """`make TARGET`: its recipe must be a README command run here, or this test suite."""

  target: str


def unknown_command_message(command: Command) -> str:
  return (f'README.md line {command.line}: no test runs `{command.text}`. Add it to COMMANDS in '
          'tests/test_readme_commands.py: Run(shorten=...) with the flags that make it finish in '
          'seconds (a `:smoke` config argument, --config.model=<tiny>, --dry_run, --launcher=print, '
          "--steps 1), or Covered('tests/<file>.py::<test>', ...) naming the test that runs it.")


def source_of_test(test: str) -> str:
  """The source of test function `tests/path.py::name`; a clear error if it does not exist."""
  path, _, name = test.partition('::')
  file = ROOT / path
  if not file.exists():
    raise AssertionError(f'{test}: no file {path}.')
  module = ast.parse(file.read_text())
  for node in ast.walk(module):
    if isinstance(node, ast.FunctionDef) and node.name == name:
      return ast.get_source_segment(file.read_text(), node)
  raise AssertionError(f'{test}: {path} defines no function {name}.')


def make_recipe(target: str) -> list[str]:
  """The recipe lines of `target` in the Makefile, `$(PY)` written as `.venv/bin/python`."""
  lines = (ROOT / 'Makefile').read_text().splitlines()
  for i, line in enumerate(lines):
    if re.match(rf'^{re.escape(target)}\s*:', line):
      recipe = []
      for body in lines[i + 1:]:
        if not body.startswith('\t'):
          break
        recipe.append(' '.join(body.strip().replace('$(PY)', '.venv/bin/python')
                               .replace('$(VENV)', '.venv').split()))
      return recipe
  raise AssertionError(f'the Makefile has no target {target!r}.')


class Sandbox:
  """A fresh directory where README commands run as a user runs them from the repository root.

  `experiments/` and `scripts/` are links to this checkout, `.venv/bin/python` starts the test's
  Python with this checkout first on its path; relative outputs (workdirs/, exports/) land here.
  """

  def __init__(self, directory: pathlib.Path):
    self.dir = directory
    for name in ('experiments', 'scripts'):
      (directory / name).symlink_to(ROOT / name)
    python = directory / '.venv' / 'bin' / 'python'
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    self.env = {**os.environ, 'PYTHONPATH': str(ROOT), 'JAX_PLATFORMS': 'cpu',
                'TF_CPP_MIN_LOG_LEVEL': '3'}
    self.done: dict[str, subprocess.CompletedProcess] = {}
    self.files: dict[str, str] = {}  # shared inputs made once (a tiny model, prepared GLUE)

  def run(self, text: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', '-c', 'set -o pipefail; ' + text], cwd=self.dir, env=self.env,
                          capture_output=True, text=True, timeout=timeout)
