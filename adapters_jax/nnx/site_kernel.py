"""An NNX site's own kernel as the methods see it: [in_features, out_features].

Merges (`adapters_jax.nnx.merge`), DoRA (which reads its site's kernel at init and at every call)
and LoRA's PiSSA/OLoRA inits (which replace the kernel by a residual) read and write the site
module's `kernel` variable in place, in its own layout:

  * `nnx.Linear`: kernel [in, out] already;
  * `nnx.LinearGeneral` (contracting its trailing input axes, no batch axes): kernel
    [*in_axes, *out_axes], read as [prod(in_axes), prod(out_axes)], the way its adapters see the
    site (`adapters_jax.nnx.adapted_site.flat_features`).

Any other module's weight layout is unknown (tunix's `Einsum` keeps a `w` in its equation's axis
order): such sites are refused with the reason.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from adapters_jax.methods.base import SiteInfo


def layout_problem(module: nnx.Module, site: SiteInfo) -> str | None:
  """Why the kernel of `module` (the module at `site`) cannot be read as [in, out]; None if it can."""
  cls = getattr(type(module), '_adapted_from', type(module))  # an adapted site's own class
  if not issubclass(cls, (nnx.Linear, nnx.LinearGeneral)):
    return (f'Site {site.path} ({cls.__name__}) has no `kernel` in a known layout (only nnx.Linear '
            '[in, out] and nnx.LinearGeneral [*in, *out] kernels are read)')
  if isinstance(module, nnx.LinearGeneral) and module.batch_axis:
    return f'Site {site.path} (LinearGeneral) has batch axes {dict(module.batch_axis)} in its kernel'
  shape = module.kernel[...].shape
  if math.prod(shape) != site.in_features * site.out_features:
    return (f'The kernel {shape} of site {site.path} is not its input features x output features '
            f'({site.in_features} x {site.out_features})')
  return None


def check_layouts(sites: list[tuple[nnx.Module, SiteInfo]], what: str) -> None:
  """Raises ValueError naming every site whose kernel cannot be read as [in, out]."""
  problems = [p for p in (layout_problem(m, s) for m, s in sites) if p]
  if problems:
    raise ValueError(f'{what} reads its sites\' kernels: ' + '; '.join(problems) +
                     '. Choose nnx.Linear or nnx.LinearGeneral sites.')


def read_kernel(module: nnx.Module, site: SiteInfo) -> jax.Array:
  """The site's kernel as [in_features, out_features] (its own dtype)."""
  return module.kernel[...].reshape(site.in_features, site.out_features)


def host_params(module: nnx.Module, site: SiteInfo) -> dict[str, jax.Array]:
  """`{'kernel': [in, out], 'bias': [out]}` (bias only if the module has one): what the methods'
  `merge` / `unmerge` fold into."""
  params = {'kernel': read_kernel(module, site)}
  if isinstance(getattr(module, 'bias', None), nnx.Variable):
    params['bias'] = module.bias[...].reshape(site.out_features)
  return params


def write_host_params(module: nnx.Module, params: dict[str, jax.Array]) -> None:
  """Writes `host_params`-shaped arrays back into the module's variables, in their own shapes and
  dtypes."""
  for key, value in params.items():
    variable = getattr(module, key)
    variable[...] = value.reshape(variable[...].shape).astype(variable[...].dtype)
