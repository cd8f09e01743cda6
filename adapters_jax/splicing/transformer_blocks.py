"""The transformer block a module belongs to, read from the host's module tree rather than its names.

A *block* is one of a run of sibling modules of one class whose names carry an index: Linen lists
(`h_0`, `h_1`, ... or `layer_3`), auto-named submodules (`Block_0`), Hugging Face Flax collections
(`layer/0`, `h/0`: a collection module whose children are named `0`, `1`, ...). The block of a site
is its nearest ancestor in such a run of two or more; with a single block (a one-layer model) the
outermost indexed ancestor that is alone of its kind. An indexed ancestor whose siblings are of
different classes is a sub-layer, not a block: T5's `block/0/layer/1` (self-attention, cross-attention
and feed-forward sub-layers) belongs to block 0.

    classes = {'transformer': 'Model', 'transformer/h/0': 'Block', 'transformer/h/1': 'Block', ...}
    block_index('transformer/h/1/attn/c_proj', classes)      # 1

Where the tree has no such structure (or a different one is meant), a `block_pattern` regex whose
first group is the index names the blocks instead, e.g. `r'(?:^|/)h/(\\d+)/'`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_INDEXED = re.compile(r'(.*?)(\d+)')


def check_block_pattern(block_pattern: str) -> re.Pattern:
  """The compiled `block_pattern`; a ValueError says what it must look like."""
  try:
    compiled = re.compile(block_pattern)
  except re.error as e:
    raise ValueError(f'block_pattern {block_pattern!r} is not a valid regular expression: {e}') from e
  if compiled.groups < 1:
    raise ValueError(f'block_pattern {block_pattern!r} needs a group that captures the block index, '
                     r"e.g. r'(?:^|/)h/(\d+)/'.")
  return compiled


def block_index(path: str, classes: Mapping[str, str], block_pattern: str | None = None) -> int | None:
  """The index of the transformer block that holds the module at `path`, or None outside blocks.

  Args:
    path: `/`-joined module path of a site.
    classes: `{module path: class name}` of the host's modules (every ancestor of `path` included),
      as recorded when the host ran (`adapters_jax.splicing.discovery.discover_calls`).
    block_pattern: a regex searched in `path` whose first group is the block index; overrides the
      tree structure.
  """
  if block_pattern is not None:
    match = check_block_pattern(block_pattern).search(path)
    return int(match.group(1)) if match else None
  parts = path.split('/')
  alone = None
  # Ancestors only, nearest first: the site itself is never its own block.
  for depth in range(len(parts) - 1, 0, -1):
    size = _run_size(parts[:depth], classes)
    if size >= 2:
      return int(_INDEXED.fullmatch(parts[depth - 1]).group(2))
    if size == 1:
      alone = int(_INDEXED.fullmatch(parts[depth - 1]).group(2))
  return alone


def _run_size(parts: list[str], classes: Mapping[str, str]) -> int:
  """How many same-class indexed siblings (itself included) the module at `parts` has; 0 if none."""
  match = _INDEXED.fullmatch(parts[-1])
  if match is None:
    return 0
  parent, stem = parts[:-1], match.group(1)
  sibling = re.compile(re.escape(stem) + r'\d+')
  depth = len(parts)
  run = set()
  kinds = set()
  for other, kind in classes.items():
    other_parts = other.split('/')
    if len(other_parts) == depth and other_parts[:-1] == parent and sibling.fullmatch(other_parts[-1]):
      run.add(other)
      kinds.add(kind)
  return len(run) if len(kinds) == 1 else 0


def no_blocks_message(what: str, site_paths: list[str]) -> str:
  """The error for `leave_out` / `skip_layers` on sites none of which is inside a found block."""
  listing = '\n  '.join(site_paths[:6]) + ('\n  ...' if len(site_paths) > 6 else '')
  return (f'{what} names transformer blocks, but none of the sites is inside a block found in the '
          'host\'s module tree (a run of same-class sibling modules with indexed names such as '
          '`h_0`, `h/0`, `layer_3` or `block/0`). Sites:\n  '
          f'{listing}\nPass add_adapter(..., block_pattern=r\'...(\\d+)...\'), a regex whose first '
          r"group is the block index in a site path (e.g. r'(?:^|/)h/(\d+)/').")
