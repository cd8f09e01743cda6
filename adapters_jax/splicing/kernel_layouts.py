"""How a site's module uses its kernel, so that a merge folds an update in the host's own layout.

Merging LoRA or (IA)3 adds to (or rescales) a dense layer's kernel. Hosts store that kernel two ways:

    'in_out'   kernel [in, out],  y = x @ kernel + bias      flax.linen.Dense, most Linen models
    'out_in'   kernel [out, in],  y = x @ kernel.T + bias    GPT-2's Conv1D (transformers' FlaxConv1D)

Shapes tell them apart only when in != out. So the layout is read from the module's behaviour: the
module recorded at discovery is applied alone to random probe inputs with a random probe kernel (and
bias) of its own shapes, and its output is compared with both formulas. A module known to compute
`x @ kernel + bias` (`flax.linen.Dense`) is not probed. A kernel that is not 2-D, params besides
`kernel` and `bias`, or an output matching neither formula leave the layout unknown, and a merge is
refused with the reason (`merge_adapter(..., kernel_layout={site regex: layout})` overrides).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KERNEL_LAYOUTS = ('in_out', 'out_in')

# Modules whose computation is known: y = x @ kernel + bias.
_KNOWN_IN_OUT = (nn.Dense,)

# Relative error under which a probe output matches a formula (bf16 modules are ~1e-2 off).
_MATCH_TOLERANCE = 0.05


def check_kernel_layouts(kernel_layout: Mapping[str, str]) -> None:
  """A `{site regex: layout}` override is valid; the error lists the layouts and what they mean."""
  for pattern, layout in kernel_layout.items():
    if layout not in KERNEL_LAYOUTS:
      raise ValueError(f'kernel_layout[{pattern!r}] = {layout!r}; valid layouts: {KERNEL_LAYOUTS} '
                       "('in_out': y = x @ kernel, kernel [in, out]; 'out_in': y = x @ kernel.T, "
                       'kernel [out, in]).')
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f'kernel_layout pattern {pattern!r} is not a valid regular expression: {e}') from e


def override_layout(path: str, kernel_layout: Mapping[str, str] | None) -> str | None:
  """The layout the first `{site regex: layout}` entry that fully matches `path` names, if any."""
  for pattern, layout in (kernel_layout or {}).items():
    if re.fullmatch(pattern, path):
      return layout
  return None


def probe_layout(call) -> tuple[str | None, str]:
  """How the module of one discovered call (`discovery.ModuleCall`) maps its input through its kernel.

  Returns:
    (layout, reason): layout is 'in_out', 'out_in' or None (unknown); reason says why it is unknown.
  """
  if call.in_shape is None or call.out_shape is None:
    return None, 'it does not map one array to one array'
  shapes = {path: (shape, dtype) for path, shape, dtype in call.param_shapes}
  if 'kernel' not in shapes:
    return None, f'it has no `kernel` param (its params: {sorted(shapes) or "none"})'
  extra = sorted(set(shapes) - {'kernel', 'bias'})
  if extra:
    return None, f'it has params besides `kernel` and `bias` ({extra}), so it is not one affine map'
  kernel_shape = shapes['kernel'][0]
  n_in, n_out = call.in_shape[-1], call.out_shape[-1]
  if len(kernel_shape) != 2:
    return None, (f'its kernel is {list(kernel_shape)}, not a 2-D matrix between the input '
                  f'features ({n_in}) and the output features ({n_out})')
  by_shape = [layout for layout, shape in (('in_out', (n_in, n_out)), ('out_in', (n_out, n_in)))
              if tuple(kernel_shape) == shape]
  if not by_shape:
    return None, (f'its kernel is {list(kernel_shape)}, neither [in, out] nor [out, in] for '
                  f'{n_in} input and {n_out} output features')
  if isinstance(call.module, _KNOWN_IN_OUT) and 'in_out' in by_shape:
    return 'in_out', ''
  if call.module is None:
    return None, 'the module could not be copied to probe it'
  return _probe(call, shapes, by_shape)


def _probe(call, shapes, candidates) -> tuple[str | None, str]:
  """Applies the module alone to random inputs with a random kernel and bias of its own shapes."""
  n_in, n_out = call.in_shape[-1], call.out_shape[-1]
  rows = 4
  # [rows, 1, ..., 1, in]: the call's rank, so modules that expect [batch, seq, features] accept it.
  x_shape = (rows,) + (1,) * max(len(call.in_shape) - 2, 0) + (n_in,)
  # numpy draws: the probe compiles nothing but the module itself.
  draw = np.random.default_rng(0)
  probe = {'kernel': draw.standard_normal(shapes['kernel'][0], np.float32)}
  if 'bias' in shapes:
    probe['bias'] = draw.standard_normal(shapes['bias'][0], np.float32)
  x = draw.standard_normal(x_shape, np.float32)
  with jax.ensure_compile_time_eval():  # concrete even when a merge is traced
    params = {k: jnp.asarray(v, shapes[k][1]) for k, v in probe.items()}
    try:
      y = call.module.apply({'params': params}, jnp.asarray(x, shapes['kernel'][1]))
    except Exception as e:  # the module needs more than one input: its layout stays unknown
      return None, f'applying it alone to a probe input raised {type(e).__name__}: {e}'
    if not hasattr(y, 'shape') or y.size != rows * n_out:
      return None, 'applied alone to a probe input it did not return one output row per input row'
    y = np.asarray(y, np.float64).reshape(rows, n_out)
  x = np.asarray(x, np.float64).reshape(rows, n_in)
  kernel = np.asarray(probe['kernel'], np.float64)
  bias = np.asarray(probe['bias'], np.float64) if 'bias' in probe else 0.0
  scale = np.abs(y).max() + 1e-12
  for layout in candidates:
    expected = x @ (kernel if layout == 'in_out' else kernel.T) + bias
    if np.abs(y - expected).max() / scale < _MATCH_TOLERANCE:
      return layout, ''
  return None, ('applied alone to a probe input it computes neither x @ kernel + bias nor '
                'x @ kernel.T + bias')


def with_layouts(name: str, sites: Sequence[Any], stack_dims: Sequence[tuple[int, ...]],
                 flat: Mapping[str, Any], kernel_layout: Mapping[str, str] | None) -> tuple[Any, ...]:
  """Adapter `name`'s sites (`methods.base.SiteInfo`) with `kernel_layout` set: the override, the
  one recorded by an earlier merge, or a probe's.

  Args:
    stack_dims: per site, the leading (nn.scan) dims its kernel has in the tree.
    flat: the host's params as `{path: array}` (the kernels' shapes are checked against the layout).
    kernel_layout: `{site regex: layout}` overrides, or None.

  Raises:
    ValueError: a site whose layout is unknown, or an override that contradicts a kernel's shape;
      every such site is named at once.
  """
  with_layout, problems = [], []
  for site, dims in zip(sites, stack_dims, strict=True):
    layout = override_layout(site.path, kernel_layout) or site.kernel_layout
    reason = ''
    if layout is None and site.host_call is not None:
      layout, reason = probe_layout(site.host_call)
    elif layout is None:
      reason = 'no module call was recorded for it'
    kernel = flat.get(f'{site.path}/kernel')
    if layout is not None and kernel is None:
      layout, reason = None, f'it has no `kernel` param to fold into (layout {layout!r} given)'
    elif layout is not None:
      expected = tuple(dims) + ((site.in_features, site.out_features) if layout == 'in_out'
                                else (site.out_features, site.in_features))
      if tuple(kernel.shape) != expected:
        reason = (f'layout {layout!r} needs a kernel {list(expected)} but it is '
                  f'{list(kernel.shape)}')
        layout = None
    if layout is None:
      problems.append(f'  {site.path}: {reason}')
    with_layout.append(dataclasses.replace(site, kernel_layout=layout))
  if problems:
    raise ValueError(
        f'Cannot fold adapter {name!r} into the base weights: how these sites\' modules use '
        'their kernel is unknown, and folding in the wrong layout would change the model.\n'
        + '\n'.join(problems) + '\nIf a site computes y = x @ kernel (+ bias) with a 2-D kernel, '
        "pass kernel_layout={r'<site regex>': 'in_out'} (kernel [in, out]) or 'out_in' "
        '(kernel [out, in], y = x @ kernel.T) to merge_adapter / unmerge_adapter; otherwise run '
        'the adapter unmerged (active=...).')
  return tuple(with_layout)
