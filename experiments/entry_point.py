"""How every `python -m experiments.<entry point>` process starts.

These processes use `transformers` for tokenizers and configs only, never its PyTorch models. Where
PyTorch is installed beside this project, `transformers` imports it on the first tokenizer unless
told not to: `USE_TORCH=0` (kept when the environment sets it) saves that import, about 1.5 s of
every start on a CPU.
"""

import os
from collections.abc import Callable

from absl import app


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with `USE_TORCH=0` unless set (children inherit it)."""
  os.environ.setdefault('USE_TORCH', '0')
  app.run(main)
