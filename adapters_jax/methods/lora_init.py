"""LoRA initialisations that take their start from the frozen kernel: PiSSA and OLoRA.

PiSSA (Meng et al. 2024) puts the kernel's r principal components into A and B and leaves the
residual frozen; OLoRA (Buyukakyuz 2024) puts the first r columns of an orthonormal basis (QR):

    PiSSA:  W = U S V^T (SVD of the [in, out] kernel),  A = U_r sqrt(S_r / s),  B = sqrt(S_r / s) V_r^T
    OLoRA:  W^T = Q R (QR of the [out, in] weight, as PEFT),  A = R_r^T,  B = Q_r^T
    both:   W_res = W - s A B   (the frozen kernel the adapter runs beside)

so at init W_res + s A B = W: the spliced model starts equal to the base. `pissa_niter_<K>` finds
U_r, S_r, V_r by a randomized SVD with K subspace iterations (Halko et al. 2011, as
`torch.svd_lowrank`), from a fixed key: the residual depends only on the kernel, so a restore onto
the same base rebuilds it. The products U_r S_r V_r^T and Q_r R_r do not depend on the sign
conventions of the decompositions, so neither does W_res.

PEFT's names: `LoraConfig(init_lora_weights='pissa' | 'pissa_niter_K' | 'olora')`.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

INITS = ('default', 'pissa', 'pissa_niter_<K>', 'olora')
_NITER = re.compile(r'pissa_niter_(\d+)')
# The randomized SVD's fixed key: the same kernel always gives the same residual.
_SKETCH_SEED = 0


def check_init(init: str) -> None:
  """Raises ValueError (listing the valid values) unless `init` names a LoRA initialisation."""
  if init in ('default', 'pissa', 'olora') or _NITER.fullmatch(init):
    return
  raise ValueError(f'Unknown LoRA init_weights {init!r}; valid: {list(INITS)} (K: subspace iterations, '
                   'e.g. pissa_niter_4).')


def principal_factors(kernel: jax.Array, rank: int, scaling: float,
                      init: str) -> tuple[jax.Array, jax.Array]:
  """A [in, r] and B [r, out] of `init` ('pissa', 'pissa_niter_K' or 'olora') for an [in, out]
  kernel, in float32; the residual is `kernel - scaling * A @ B`."""
  kernel = kernel.astype(jnp.float32)  # [in, out]
  if rank > min(kernel.shape):
    raise ValueError(f'LoRA init_weights={init!r} needs rank <= min(in, out) = {min(kernel.shape)}; got '
                     f'rank={rank}.')
  if init == 'olora':
    q, r = jnp.linalg.qr(kernel.T)  # [out, k], [k, in]
    return r[:rank].T, q[:, :rank].T
  if init == 'pissa':
    u, s, vh = jnp.linalg.svd(kernel, full_matrices=False)  # [in, k], [k], [k, out]
  else:
    u, s, vh = _randomized_svd(kernel, rank, int(_NITER.fullmatch(init).group(1)))
  root = jnp.sqrt(s[:rank] / scaling)  # [r]
  return u[:, :rank] * root, root[:, None] * vh[:rank]


def _randomized_svd(matrix: jax.Array, rank: int, niter: int):
  """U [m, r], S [r], V^T [r, n] of a rank-r approximation of `matrix` [m, n] (Halko et al.
  2011, algorithm 4.4, without oversampling, as `torch.svd_lowrank(q=r)`)."""
  hi = jax.lax.Precision.HIGHEST
  sketch = jax.random.normal(jax.random.key(_SKETCH_SEED), (matrix.shape[1], rank), matrix.dtype)
  basis = jnp.linalg.qr(jnp.matmul(matrix, sketch, precision=hi))[0]  # [m, r]
  for _ in range(niter):
    basis = jnp.linalg.qr(jnp.matmul(matrix.T, basis, precision=hi))[0]  # [n, r]
    basis = jnp.linalg.qr(jnp.matmul(matrix, basis, precision=hi))[0]  # [m, r]
  small = jnp.matmul(basis.T, matrix, precision=hi)  # [r, n]
  u, s, vh = jnp.linalg.svd(small, full_matrices=False)
  return jnp.matmul(basis, u, precision=hi), s, vh
