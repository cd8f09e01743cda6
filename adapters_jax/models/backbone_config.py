"""What every backbone config shares: the dtype table, checks whose errors list the valid choices,
and `replace`.

`EncoderConfig`, `T5Config` and `DecoderConfig` are frozen dataclasses deriving from
`BackboneConfig`; each keeps its own fields, defaults and `from_hf_config`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def check_choice(name: str, value: Any, valid: tuple) -> None:
  """Raises ValueError naming `name`, `value` and the valid values when `value` is not one."""
  if value not in valid:
    raise ValueError(f'{name}={value!r} is not supported; valid values: {list(valid)}.')


def check_fields(config_class: type, overrides: dict[str, Any]) -> None:
  """Raises ValueError listing the valid fields when `overrides` names one `config_class` lacks."""
  valid = [f.name for f in dataclasses.fields(config_class)]
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f'Unknown {config_class.__name__} field(s) {unknown}; valid fields: {valid}.')


class BackboneConfig:
  """Methods shared by the backbone config dataclasses (which define `dtype`)."""

  dtype: str

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  def replace(self, **overrides: Any):
    """Returns a copy with `overrides`; an unknown field is an error listing the valid ones."""
    check_fields(type(self), overrides)
    return dataclasses.replace(self, **overrides)
