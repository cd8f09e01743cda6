"""Blockwise absmax codecs of a frozen kernel: 4-bit NormalFloat (NF4), int4 and int8.

The last axis of a kernel is cut into blocks of `block_size` values (zero-padded to a multiple of
it); each block keeps its absolute maximum (`scales`, float) and each value a code of the value
divided by it:

    nf4   the nearest of the 16 NormalFloat levels (`NF4_LEVELS`, the QLoRA paper's table as
          bitsandbytes ships it); two 4-bit codes per uint8. Error <= absmax * (the largest gap
          between neighbouring levels) / 2 = absmax * 0.0804 per value.
    int4  round(x / absmax * 7) in [-7, 7], stored + 8; two per uint8. Error <= absmax / 14.
    int8  round(x / absmax * 127) in [-127, 127] as int8. Error <= absmax / 254.

(plus float rounding of the scale's dtype.) Blocks along the last axis keep every leading axis
whole (a scanned stack's `[layers]`, a kernel's fan-in), so a sharding rule over a kernel's
`[in, out]` applies as it is to `codes` `[in, out / 2]` (4-bit) or `[in, out]` (int8) and to
`scales` `[in, out / block_size]` (`out` rounded up to whole blocks).

    q = quantize(kernel, 'nf4', block_size=64)    # kernel [4096, 11008] float32
    q.codes  # uint8 [4096, 5504]; q.scales float32 [4096, 172]
    kernel_hat = dequantize(q)                     # [4096, 11008] in q.scales.dtype

Everything is `jnp`, so it jits: the train step dequantises inside the compiled program (XLA fuses
the table lookup and the scaling into the kernel's consumer).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# bitsandbytes' `create_normal_map()` (QLoRA, Dettmers et al. 2023, appendix E), as float32.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)
KINDS = ('nf4', 'int4', 'int8')
# The documented error per value, as a fraction of its block's absmax (see the module docstring).
ERROR_BOUND = {'nf4': float(np.max(np.diff(NF4_LEVELS)) / 2), 'int4': 1 / 14, 'int8': 1 / 254}
_INT_LEVELS = {'int4': 7, 'int8': 127}


@struct.dataclass
class QuantizedArray:
  """A kernel stored as codes and per-block scales; a pytree whose leaves are the two arrays.

  Attributes:
    codes: uint8 [..., m / 2] (nf4, int4: two codes per byte, the even index in the low nibble) or
      int8 [..., m] (int8); m = n rounded up to a multiple of `block_size` (zeros pad it).
    scales: float [..., m / block_size], each block's absolute maximum.
    kind: one of `KINDS`.
    block_size: values per block along the last axis.
    shape, dtype: of the kernel that was quantised (what counts and fingerprints see).
  """

  codes: jax.Array
  scales: jax.Array
  kind: str = struct.field(pytree_node=False)
  block_size: int = struct.field(pytree_node=False)
  shape: tuple[int, ...] = struct.field(pytree_node=False)
  dtype: str = struct.field(pytree_node=False)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))

  @property
  def nbytes(self) -> int:
    """Bytes of the stored codes and scales."""
    return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in (self.codes, self.scales))


def check_scheme(kind: str, block_size: int) -> None:
  """Raises ValueError (naming the fix) unless `kind` and `block_size` make a codec."""
  if kind not in KINDS:
    raise ValueError(f'Unknown quantisation {kind!r}; valid: {list(KINDS)}.')
  if block_size < 2 or block_size % 2:
    raise ValueError(f'quantize_block_size={block_size} must be an even number >= 2 (e.g. 64).')


def quantize(x: jax.Array, kind: str, block_size: int = 64) -> QuantizedArray:
  """`x` [..., n] as `kind` codes and float32 block scales."""
  check_scheme(kind, block_size)
  n = x.shape[-1]
  padded = jnp.pad(jnp.asarray(x, jnp.float32), [(0, 0)] * (x.ndim - 1) + [(0, -n % block_size)])
  blocks = padded.reshape(*x.shape[:-1], -1, block_size)  # [..., m / B, B]
  absmax = jnp.max(jnp.abs(blocks), axis=-1)  # [..., n / B]
  unit = blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None]  # in [-1, 1]
  if kind == 'nf4':
    levels = jnp.asarray(NF4_LEVELS, jnp.float32)
    codes = jnp.searchsorted((levels[1:] + levels[:-1]) / 2, unit).astype(jnp.uint8)
  else:
    top = _INT_LEVELS[kind]
    codes = jnp.clip(jnp.round(unit * top), -top, top)
    codes = (codes + 8).astype(jnp.uint8) if kind == 'int4' else codes.astype(jnp.int8)
  codes = codes.reshape(padded.shape)
  if kind != 'int8':
    codes = codes[..., 0::2] | (codes[..., 1::2] << 4)  # [..., n / 2]
  return QuantizedArray(codes=codes, scales=absmax, kind=kind, block_size=block_size,
                        shape=tuple(x.shape), dtype=np.dtype(x.dtype).name)


def dequantize(q: QuantizedArray) -> jax.Array:
  """The kernel `q` stands for, [*q.shape], in `q.scales.dtype`."""
  dtype = q.scales.dtype
  if q.kind == 'int8':
    unit = q.codes.astype(dtype) / 127
  else:
    nibbles = jnp.stack([q.codes & 15, q.codes >> 4], axis=-1)
    nibbles = nibbles.reshape(*q.codes.shape[:-1], -1)  # [..., m]
    unit = (jnp.asarray(NF4_LEVELS, dtype)[nibbles] if q.kind == 'nf4' else
            (nibbles.astype(dtype) - 8) / 7)
  blocks = unit.reshape(*q.scales.shape, q.block_size)  # [..., m / B, B]
  values = (blocks * q.scales[..., None]).reshape(*q.shape[:-1], -1)
  return values[..., :q.shape[-1]]
