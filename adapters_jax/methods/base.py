"""What every adapter method provides: a frozen config that knows its sites and builds its modules.

A method config (e.g. `BottleneckConfig`) is a frozen dataclass. Splicing asks it for:
  * `site_rules()`: where its adapters go (`SiteRule`s: pattern + placement);
  * `make_module(site)`: the Flax module for one matched site (given its feature sizes);
  * `make_shared_module(sites)`: optionally, one module whose params all sites share (Compacter's
    rule matrices, prefix tuning's MLP); its params are passed to every site module as `shared`.

Behaviour that differs by method is asked of the config too, never decided by `isinstance` elsewhere:
`fusable` / `make_delta_module` (AdapterFusion attends over these adapters' outputs), `is_fusion`,
`merge` / `unmerge` (fold into the base weights) and `average` (combine parameters).

Site modules are called as `module.apply({'params': p}, x, shared=shared_params, deterministic=...)`,
plus `site_params=` (the site module's own params, e.g. `kernel` and `bias`, at init and at every
call) for methods that set `reads_site_params` (DoRA reads the frozen kernel), and at init only for
methods whose `changes_base` is true (PiSSA/OLoRA LoRA: the adapter takes part of the kernel, and
`add_adapter` leaves `unmerge(kernel, initial adapter)` as the frozen kernel):
  * placement `output`:   x is the site's output,  returns the new output;
  * placement `parallel`: x is the site's input,   returns a term added to the output;
  * placement `input`:    x is the site's input,   returns the new input;
  * placement `keys_values`: x is `(key, value, mask, query_input)` of an attention
    (`nn.key_value_hook`), returns them with key, value and mask extended (prefix tuning).
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax

from adapters_jax.splicing.sites import LAYER_PREFIX, SiteRule, as_site_rules


@dataclasses.dataclass(frozen=True)
class SiteInfo:
  """A matched site, as an adapter module needs to know it.

  Attributes:
    path: `/`-joined module path of the site.
    placement: `output`, `parallel` or `input`.
    in_features: last dimension of the site's input.
    out_features: last dimension of the site's output.
    layer: index of the transformer block the site is in (`splicing.transformer_blocks`), None outside
      blocks.
    kernel_layout: how the site's module uses its kernel (`adapters_jax.splicing.kernel_layouts`: 'in_out' or
      'out_in'), once a merge has determined it; None before.
    host_call: what discovery recorded of the site's module call (`discovery.ModuleCall`), so a
      merge can probe the module; None for sites not made from a host call.
  """

  path: str
  placement: str
  in_features: int
  out_features: int
  layer: int | None = None
  kernel_layout: str | None = dataclasses.field(default=None, compare=False)
  host_call: Any = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def features(self) -> int:
    """Width of the tensor the adapter sees (`parallel` and `input` see the input)."""
    return self.out_features if self.placement == 'output' else self.in_features





@dataclasses.dataclass(frozen=True)
class MethodConfig:
  """Fields shared by every adapter method.

  Attributes:
    sites: `(pattern, placement)` pairs naming where adapters go (see `adapters_jax.splicing.sites`).
    leave_out: transformer block indices that get no adapter.
    train_also: whole-name regexes of host parameters trained with the adapter (e.g. layer norms).
  """

  kind: ClassVar[str] = ''
  # AdapterFusion can attend over this method's adapters (their outputs live in the site's space).
  fusable: ClassVar[bool] = False
  # A fusion layer over other adapters (its config names them in `adapters`).
  is_fusion: ClassVar[bool] = False
  # The site module gets the site's own params (`site_params=`) at init and at apply (DoRA).
  reads_site_params: ClassVar[bool] = False
  # Non-empty: the adapter has no output at its sites to combine (Average and Fuse refuse it with
  # this text as the reason; Stack, PerExample and Parallel take it). Prefix tuning.
  no_site_output: ClassVar[str] = ''
  # The adapter's output at one position reads every position of its input (UniPELT's gates: a
  # mean over the sequence), so the host must compute every position: a host method taking
  # `first_token_only` (our BERT classifier's last layer) gets False.
  reads_every_position: ClassVar[bool] = False
  # The site's output is longer than its input (prompt tuning): only hosts that grow their masks
  # with it run the method (`adapters_jax.models.input_embeddings`); the NNX splice refuses it.
  lengthens_sequence: ClassVar[bool] = False
  # Put in front of the error when a site pattern matches nothing: what the host must expose.
  missing_site_hint: ClassVar[str] = ''
  sites: tuple[tuple[str, str], ...] = ()
  leave_out: tuple[int, ...] = ()
  train_also: tuple[str, ...] = ()

  def __post_init__(self):
    as_site_rules(self.sites)  # validates patterns and placements early

  def site_rules(self) -> tuple[SiteRule, ...]:
    return as_site_rules(self.sites)

  @property
  def frozen_leaves(self) -> tuple[str, ...]:
    """Whole-name regexes of leaves inside the adapter's subtree (relative to `adapters/<name>/`
    or a site's `.../adapters/<name>/`) that never train but belong to the adapter: held in its
    checkpoints, frozen by `trainable.adapter_rules` (VeRA's stored projections). None by default."""
    return ()

  @property
  def changes_base(self) -> bool:
    """The adapter's init moves part of each site's kernel into the adapter (PiSSA, OLoRA): its
    module's init gets `site_params=` (the kernel in the layout `site.kernel_layout` says) and
    `add_adapter` replaces the kernel by `unmerge(kernel, initial adapter)`, the residual. A
    restore onto the original base rebuilds the same residual the same way."""
    return False

  def make_module(self, site: SiteInfo) -> nn.Module:
    raise NotImplementedError

  def make_shared_module(self, sites: Sequence[SiteInfo] = ()) -> nn.Module | None:
    """One module whose params every site gets as `shared`, or None; `sites`: the matched sites
    (prefix tuning sizes its shared MLP per location by them)."""
    return None

  def with_tokenizer(self, tokenizer: Any) -> MethodConfig:
    """This config with its text fields tokenized (prompt tuning's `init_text`); itself when it
    has none. Called where a tokenizer is at hand (experiment runs)."""
    del tokenizer
    return self

  def init_extras(self, host_params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for every site module's init, read from the host's params
    (`/`-joined paths to arrays): prompt tuning's embedding matrix. None by default."""
    del host_params
    return {}

  def make_delta_module(self, site: SiteInfo) -> nn.Module:
    """The site module without its residual: what AdapterFusion attends over (`fusable` methods)."""
    raise NotImplementedError(f'{type(self).__name__} adapters cannot be fused.')

  def check_average(self, how: str) -> None:
    """Raises ValueError (naming the alternative) unless `average(..., how)` is possible."""
    raise ValueError(f'Averaging {self.kind} adapters is not supported (only lora, ia3 and '
                     'bottleneck adapters); combine them at apply time with Average(...).')

  def average(self, methods: Sequence[MethodConfig], site_params: Sequence[dict[str, Any]],
              weights: Sequence[float], how: str) -> tuple[MethodConfig, dict[str, Any]]:
    """One site of a new adapter combining `methods` (this config first) by parameters.

    Args:
      methods: the sources' configs (all of this config's type).
      site_params: per source, its params at one site (nested dict).
      weights: per source, normalised to sum 1.
      how: `exact` (the output equals the weighted average of outputs) or `linear` (every leaf
        the weighted average of the sources' leaves).

    Returns:
      The new adapter's config and its params at this site.
    """
    self.check_average(how)
    raise NotImplementedError

  def check_merge(self) -> None:
    """Raises NotImplementedError (naming the methods that can) unless `merge` is possible."""
    raise NotImplementedError(f'{type(self).__name__} cannot be merged into the base weights; '
                              'only LoRA, VeRA, DoRA and (IA)3 can.')

  def merge(self, host_params: dict[str, Any], adapter_params: dict[str, Any],
            site: SiteInfo) -> dict[str, Any]:
    """Folds the adapter into the site's own weights (`kernel` [in, out], `bias` [out]), when the
    method allows; the kernel comes in this layout whatever the host stores
    (`splicing.merge.merge_adapter` transposes it). `adapter_params` are the site's own, plus the
    adapter's shared params under `shared` when it has any."""
    raise NotImplementedError(f'{type(self).__name__} cannot be merged into the base weights; '
                              'only LoRA, VeRA, DoRA and (IA)3 can.')

  def unmerge(self, host_params: dict[str, Any], adapter_params: dict[str, Any],
              site: SiteInfo) -> dict[str, Any]:
    """Inverse of `merge`."""
    raise NotImplementedError(f'{type(self).__name__} cannot be merged into the base weights.')

  def eject_site(self, shared: dict[str, Any] | None, site_params: dict[str, Any],
                 site: SiteInfo) -> dict[str, Any]:
    """The params of one site with what it reads of `shared` folded in (`ejected()`'s layout), for
    inference without the shared module (prefix tuning's MLP -> flat prefixes)."""
    raise NotImplementedError(f'{type(self).__name__} has nothing to eject; only reparameterised '
                              'prefix tuning (flat=False) does.')

  def ejected(self) -> MethodConfig:
    """The config of the params `eject_site` returns."""
    raise NotImplementedError(f'{type(self).__name__} has nothing to eject.')

  # --- serialisation (recorded beside checkpoints) ---

  def to_dict(self) -> dict[str, Any]:
    fields = dataclasses.asdict(self)
    return {'kind': self.kind, **fields}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)


def linear_average(methods: Sequence[MethodConfig], site_params: Sequence[dict[str, Any]],
                   weights: Sequence[float]) -> tuple[MethodConfig, dict[str, Any]]:
  """Every leaf the weighted average of the sources' leaves; the sources' configs must be equal."""
  if len(set(methods)) != 1:
    raise ValueError(f"how='linear' needs identical adapter configs; got {list(methods)}.")

  def combine(*leaves):
    return sum(w * leaf for w, leaf in zip(weights, leaves, strict=True))

  return methods[0], jax.tree.map(combine, *site_params)


def replace_fields(config: MethodConfig, **overrides: Any) -> MethodConfig:
  """`dataclasses.replace` with errors that list the valid options or name the type wanted.

  Values come from code and from JSON (checkpoint records, experiment configs), so lists are
  accepted for tuple fields (and stored as tuples) and ints for float fields.
  """
  valid = [f.name for f in dataclasses.fields(config)]
  unknown = sorted(set(overrides) - set(valid))
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} for {type(config).__name__}; '
                     f'valid options: {valid}.')
  hints = typing.get_type_hints(type(config))
  for key, value in overrides.items():
    if not _fits(value, hints[key]):
      raise ValueError(f'Option {key}={value!r} of {type(config).__name__} is a '
                       f'{type(value).__name__}; {key} takes {_type_name(hints[key])}.')
  # JSON turns tuples into lists; the configs are hashable tuples.
  fixed = {k: _to_tuple(v) for k, v in overrides.items()}
  return dataclasses.replace(config, **fixed)


def _fits(value: Any, hint: Any) -> bool:
  """Whether `value` is of type `hint` (the field annotations the configs use)."""
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if hint is Any:
    return True
  if origin in (typing.Union, types.UnionType):
    return any(_fits(value, arm) for arm in args)
  if hint is type(None):
    return value is None
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      return False
    if len(args) == 2 and args[1] is Ellipsis:
      return all(_fits(v, args[0]) for v in value)
    return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args, strict=True))
  if isinstance(hint, type):
    return isinstance(value, hint)
  return True


def _type_name(hint: Any) -> str:
  if isinstance(hint, type) and typing.get_origin(hint) is None:
    return hint.__name__
  return str(hint).replace('typing.', '')


def adapter_drop(config: MethodConfig, dropped_layers: Iterable[int],
                 block_prefix: str = LAYER_PREFIX) -> MethodConfig:
  """`config` with no adapter in `dropped_layers` and nothing of theirs trained (AdapterDrop).

  AdapterDrop (Rueckle et al. 2021) removes the adapters of the lowest layers. Besides
  `leave_out`, each `train_also` pattern (Houlsby's layer norms) is narrowed to leaves inside a
  kept block (`layer_<i>/` or `layer/<i>/`, the paths `leave_out` itself reads), so the
  embeddings and the dropped layers stay frozen as well: when the dropped layers are the lowest
  ones, the backward pass ends at the lowest kept layer (a train step of 0.39 of full
  fine-tuning with the lower 3 of 6 layers dropped, docs/performance.md).

  Args:
    block_prefix: a regex for what stands just before a block's index in a parameter path: by
      default ours and HF Flax BERT's (`layer_<i>/`, `layer/<i>/`); `h/` for GPT-2
      (`transformer/h/<i>/`), `block/` for T5 as Hugging Face names it (`block/<i>/layer/<j>/`).
      (`leave_out` itself reads the blocks from the host's module tree at `add_adapter`.)

  Example: `adapter_drop(get_method('houlsby'), range(3))`; in an experiment config,
  `config.adapter_drop_layers = (0, 1, 2)`.
  """
  dropped = sorted({int(i) for i in dropped_layers})
  if not dropped:
    return config
  # Inside a block whose index is not dropped.
  kept_block = (f'(?=(?:.*/)?{block_prefix}(?!(?:' + '|'.join(str(i) for i in dropped)
                + r')/)\d+/)')
  narrowed = []
  for pattern in config.train_also:
    flags, rest = re.fullmatch(r'(\(\?[aiLmsux]+\))?(.*)', pattern, re.DOTALL).groups()
    narrowed.append(f'{flags or ""}{kept_block}(?:{rest})')
  return dataclasses.replace(config, leave_out=tuple(sorted(set(config.leave_out) | set(dropped))),
                             train_also=tuple(narrowed))


def _to_tuple(value: Any) -> Any:
  if isinstance(value, list):
    return tuple(_to_tuple(v) for v in value)
  return value
