"""PEFT LoRA (with or without DoRA), VeRA, (IA)3, PROMPT_TUNING and PREFIX_TUNING directories -> our
adapters (the inverse of `peft`; prompt learning: `peft_prompts`).

The family is read from the module names (`bert.`/`roberta.`/`encoder.layer.`, `model.layers.`,
`transformer.h.`, `{encoder,decoder}.block.`). A module's own scaling (`rank_pattern`,
`alpha_pattern`) that differs from the adapter's moves into its B. GPT-2's fused `c_attn` maps back
when its LoRA B is block-structured (each rank column touches one of query/key/value, the same
number of columns each); otherwise the import is refused in one line. VeRA comes with the frozen
projections the file holds (`base_model.vera_A` [r, N], `vera_B` [M, r]: PEFT's default
`save_projection=True`), kept as our `stored_projections`; a save without them is refused (PEFT
draws them from torch's generator, which is not reproduced here), and so is VeRA on GPT-2's fused
`c_attn` (one lambda_d and one slice of B for query, key and value). Refused too: LoRA biases,
layer replication, inits that change the base other than PiSSA/OLoRA (`init_lora_weights`, kept
as our `init_weights`: the restore rebuilds the residual, as PEFT's load does), and other PEFT types.
"""

from __future__ import annotations

import logging
import math
import pathlib
import re

import numpy as np

from adapters_jax.interop import peft_prompts
from adapters_jax.interop.naming import InteropError, hf_to_base_leaf, read_adapter_weights, read_json
from adapters_jax.interop.peft import CONFIG_FILE, PEFT_PREFIX, WEIGHTS_FILE
from adapters_jax.interop.peft_names import FUSED_PARTS, locate_site, module_to_sites
from adapters_jax.interop.portable import PortableAdapter, base_from_metadata
from adapters_jax.methods import DoRAConfig, IA3Config, LoRAConfig, VeRAConfig
from adapters_jax.methods.lora import lora_scaling
from adapters_jax.methods.vera import STORED_LEAVES
from adapters_jax.splicing.sites import LAYER_NORM_PARAMS
from adapters_jax.splicing.tree import shared_path

log = logging.getLogger(__name__)
_SUFFIX = re.compile(r'\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|ia3_l|vera_lambda_[bd])$')
# PEFT's shared VeRA projections (`save_projection=True`), outside `base_model.model.`.
VERA_PROJECTIONS = ('base_model.vera_A', 'base_model.vera_B')
_FAMILIES = ((r'^(bert\.|roberta\.)?encoder\.layer\.', 'bert'), (r'^model\.layers\.', 'llama'),
             (r'^transformer\.h\.', 'gpt2'), (r'^(encoder|decoder)\.block\.', 't5'))


def import_adapter(directory: str | pathlib.Path, name: str,
                   base_config: dict | None = None) -> PortableAdapter:
  """Reads a PEFT LoRA/DoRA, VeRA, (IA)3, PROMPT_TUNING or PREFIX_TUNING directory (safetensors) as
  adapter `name`; `base_config` (the base's config.json) sizes a T5 prefix to its decoder."""
  directory = pathlib.Path(directory)
  if not (directory / WEIGHTS_FILE).is_file() and (directory / 'adapter_model.bin').is_file():
    raise InteropError(f'{directory} holds pickled weights (adapter_model.bin), which are never loaded; '
                       're-save it with `model.save_pretrained(dir, safe_serialization=True)`.')
  where = directory / CONFIG_FILE
  config = read_json(where)
  peft_type = config['peft_type']
  if peft_type in peft_prompts.REFUSED_TYPES:
    peft_prompts.refuse_import(peft_type, where)
  if peft_type not in ('LORA', 'VERA', 'IA3', *peft_prompts.PROMPT_TYPES):
    raise InteropError(f'{where}: peft_type {peft_type!r} has no equivalent here; importable: LORA, '
                       'VERA, IA3, PROMPT_TUNING, PREFIX_TUNING.')
  if peft_type == 'VERA' and not config.get('save_projection', True):
    raise InteropError(f'{where}: save_projection=false: the file lacks vera_A/vera_B, which PEFT '
                       'regenerates with torch\'s generator (not reproduced here); save the adapter with '
                       'VeraConfig(save_projection=True), PEFT\'s default.')
  _refuse(config, where)
  weights = directory / WEIGHTS_FILE
  tensors, metadata = read_adapter_weights(weights)
  if peft_type in peft_prompts.PROMPT_TYPES:
    if peft_type == 'PROMPT_TUNING':
      method, leaves, rest = peft_prompts.import_prompt(config, tensors, name, weights)
    else:
      method, leaves, rest = peft_prompts.import_prefix(config, tensors, name, weights, base_config)
    base = _base_tensors(rest, peft_prompts.PROMPT_PREFIX, 'bert', weights)
    return PortableAdapter(name=name, method=method, leaves={**leaves, **base}, sites={},
                           base=_identity(metadata, config, directory))
  projections = {key: tensors.pop(key) for key in VERA_PROJECTIONS if key in tensors}
  by_module: dict[str, dict[str, np.ndarray]] = {}
  rest = {}
  for key, value in tensors.items():
    module_key = key.removeprefix(PEFT_PREFIX)
    match = _SUFFIX.search(module_key)
    if match is None:
      rest[module_key] = value
    else:
      by_module.setdefault(module_key[:match.start()], {})[match.group(1).split('.')[0]] = value
  if not by_module:
    raise InteropError(f'{weights} holds no LoRA/VeRA/(IA)3 weights.')
  family = _family(next(iter(by_module)), weights)
  sites_of = {}
  for module in by_module:
    sites_of[module] = module_to_sites(module, family)
    if not sites_of[module]:
      raise InteropError(f'{weights}: {PEFT_PREFIX}{module} adapts a module that is no site of our '
                         f'{family} backbone (attention query/key/value/output, the FFN projections).')
  shared = {}
  if peft_type == 'LORA':
    method_of, leaves = _lora(config, by_module, sites_of, name, weights)
  elif peft_type == 'VERA':
    method_of, leaves, shared = _vera(config, by_module, sites_of, projections, name, weights)
  else:
    method_of, leaves = _ia3(config, by_module, sites_of, name)
  base = _base_tensors({PEFT_PREFIX + k: v for k, v in rest.items()}, PEFT_PREFIX, family, weights)
  train_also = (LAYER_NORM_PARAMS,) if any('layer_norm' in p for p in base) else ()
  placements = {path.split('/adapters/')[0]: placement for path, (_, placement) in leaves.items()}
  method = method_of(_site_rules(placements), train_also)
  values = {path: value for path, (value, _) in leaves.items()}
  return PortableAdapter(name=name, method=method, leaves={**values, **shared, **base}, sites={},
                         base=_identity(metadata, config, directory))


def _base_tensors(tensors: dict, key_prefix: str, family: str, weights: pathlib.Path) -> dict:
  """`{our path: value}` of the head / layer-norm tensors (`key_prefix` + transformers name; for
  BERT/RoBERTa only); any other tensor is refused by name."""
  base = {}
  for key, value in tensors.items():
    mapped = hf_to_base_leaf(key.removeprefix(key_prefix)) if family == 'bert' else None
    if mapped is None:
      raise InteropError(f'{weights}: tensor {key} has no place here (only the adapter\'s weights, and '
                         'for BERT/RoBERTa layer norms and the classification head).')
    base[mapped[0]] = mapped[1](value)
  return base


def _identity(metadata: dict, config: dict, directory: pathlib.Path) -> dict:
  """The base identity our exports carry; for files made elsewhere, the base they name (not checked)."""
  identity = base_from_metadata(metadata)
  if not identity and config.get('base_model_name_or_path'):
    identity = {'name': str(config['base_model_name_or_path'])}
    log.info('%s was trained on %r (not checked against the base it is imported onto).', directory,
             identity['name'])
  return identity


def _family(module: str, weights: pathlib.Path) -> str:
  for pattern, family in _FAMILIES:
    if re.match(pattern, module):
      return family
  raise InteropError(f'{weights}: module {module!r} belongs to no backbone here (BERT/RoBERTa, GPT-2, '
                     'Llama/Qwen2/Mistral/Gemma, T5).')


def _pattern_value(patterns: dict, module: str, default):
  """PEFT's `get_pattern_key`: the first key `k` with `(.*\\.)?(k)$` matching the module name."""
  for key, value in (patterns or {}).items():
    if re.match(rf'(.*\.)?({key})$', module):
      return value
  return default


def _lora(config, by_module, sites_of, name, weights):
  """`(method maker, {leaf path: (value, placement)})` of a LoRA/DoRA file."""
  dora, rslora = bool(config.get('use_dora')), bool(config['use_rslora'])
  pieces = {}  # site -> (A [in, r], B [r, out], magnitude [out] or None, module scaling)
  for module, found in by_module.items():
    if 'lora_A' not in found or 'lora_B' not in found or (dora and 'lora_magnitude_vector' not in found):
      raise InteropError(f'{weights}: {PEFT_PREFIX}{module} lacks some of its LoRA/DoRA tensors '
                         f'(has {sorted(found)}).')
    a, b = found['lora_A'], found['lora_B']  # [R, in], [out, R]
    rank = a.shape[0]
    scaling = lora_scaling(float(_pattern_value(config.get('alpha_pattern'), module, config['lora_alpha'])),
                           rank, rslora)
    magnitude = found.get('lora_magnitude_vector')
    sites = sites_of[module]
    if len(sites) == 1:
      pieces[sites[0]] = (a.T, b.T, magnitude, scaling)
      continue
    for part, columns in _fused_columns(b, module, weights).items():
      width = b.shape[0] // len(FUSED_PARTS)
      rows = slice(part * width, (part + 1) * width)
      part_magnitude = None if magnitude is None else magnitude[rows]
      pieces[sites[part]] = (a[columns].T, b[rows][:, columns].T, part_magnitude, scaling)
  ranks = {site: piece[0].shape[1] for site, piece in pieces.items()}
  if len(set(ranks.values())) != 1:
    raise InteropError(f'{weights}: the modules have different ranks {sorted(set(ranks.values()))} '
                       '(rank_pattern, or an unevenly fused c_attn); one rank for every site maps here.')
  rank = next(iter(ranks.values()))
  first_scaling = next(iter(pieces.values()))[3]
  alpha = float(config['lora_alpha'])
  if lora_scaling(alpha, rank, rslora) != first_scaling:  # e.g. a fused c_attn alone, r = 3 r_part
    alpha = first_scaling * (math.sqrt(rank) if rslora else rank)
  scaling = lora_scaling(alpha, rank, rslora)
  leaves = {}
  for site, (a, b, magnitude, module_scaling) in pieces.items():
    stem = f'{site}/adapters/{name}/'
    leaves[stem + 'lora_a'] = (np.ascontiguousarray(a, np.float32), 'parallel')
    b = b if module_scaling == scaling else b * np.float32(module_scaling / scaling)
    leaves[stem + 'lora_b'] = (np.ascontiguousarray(b, np.float32), 'parallel')
    if magnitude is not None:
      leaves[stem + 'magnitude'] = (np.asarray(magnitude, np.float32), 'parallel')
  init_weights = lora_init_weights(config, weights)
  if dora and init_weights != 'default':
    raise InteropError(f'{weights}: DoRA with init_lora_weights={init_weights!r} is not rebuilt here.')
  extra = {} if dora else {'init_weights': init_weights}
  cls = DoRAConfig if dora else LoRAConfig

  def make(sites, train_also):
    return cls(sites=sites, rank=rank, alpha=alpha, dropout=float(config['lora_dropout']),
               use_rslora=rslora, train_also=train_also, **extra)

  return make, leaves


def lora_init_weights(config: dict, where: pathlib.Path) -> str:
  """Our `LoRAConfig.init_weights` for PEFT's `init_lora_weights`: PiSSA/OLoRA adapters run beside
  the residual their init leaves in the base (PEFT rebuilds it on load; so does our restore); the
  other inits only set the starting values, which the file's weights replace."""
  init = config.get('init_lora_weights', True)
  if init in (True, False, None, 'gaussian'):
    return 'default'
  if init == 'olora' or re.fullmatch(r'pissa(_niter_\d+)?', str(init)):
    return init
  raise InteropError(f'{where}: init_lora_weights={init!r} changes the base in a way not rebuilt '
                     "here; only True, 'gaussian', 'pissa', 'pissa_niter_<K>' and 'olora' map.")


def _fused_columns(b: np.ndarray, module: str, weights: pathlib.Path) -> dict[int, list[int]]:
  """`{part: B's columns}` of a fused `c_attn` LoRA B `[3 h, R]`; all-zero columns go to the parts
  short of columns. Refuses a B whose column mixes parts or whose parts get unequal ranks."""
  width = b.shape[0] // len(FUSED_PARTS)
  blocks = np.abs(b).reshape(len(FUSED_PARTS), width, b.shape[1]).max(axis=1) > 0  # [3, R]
  columns: dict[int, list[int]] = {}
  free = []
  for column in range(b.shape[1]):
    touched = np.flatnonzero(blocks[:, column])
    if len(touched) > 1:
      raise InteropError(f'{weights}: {module} LoRA B column {column} mixes '
                         f'{[FUSED_PARTS[p] for p in touched]}; only a block-structured B (each rank column '
                         'within one of query/key/value) maps onto our separate projections.')
    if len(touched) == 1:
      columns.setdefault(int(touched[0]), []).append(column)
    else:
      free.append(column)
  if not columns:
    log.info('%s: %s has an all-zero LoRA B; it changes nothing and is left out.', weights, module)
    return {}
  rank = max(len(c) for c in columns.values())
  for part in sorted(columns):
    while len(columns[part]) < rank and free:
      columns[part].append(free.pop(0))
  if free or len({len(c) for c in columns.values()}) != 1:
    ranks = {FUSED_PARTS[p]: len(c) for p, c in columns.items()}
    raise InteropError(f'{weights}: {module} LoRA B gives query/key/value unequal ranks {ranks}; one rank '
                       'per part maps here.')
  return {part: sorted(c) for part, c in sorted(columns.items())}


def _vera(config, by_module, sites_of, projections, name, weights):
  """`(method maker, {leaf path: (value, placement)}, {shared leaf path: value})` of a VeRA file:
  per module `vera_lambda_d` [r] and `vera_lambda_b` [out]; the shared `vera_A` [r, N] and
  `vera_B` [M, r] become our stored `projection_a` [N, r] and `projection_b` [r, M]."""
  if len(projections) != len(VERA_PROJECTIONS):
    raise InteropError(f'{weights} lacks {[k for k in VERA_PROJECTIONS if k not in projections]}: PEFT '
                       'regenerates them with torch\'s generator (not reproduced here); save the adapter '
                       'with VeraConfig(save_projection=True), PEFT\'s default.')
  leaves = {}
  for module, found in by_module.items():
    if set(found) != {'vera_lambda_d', 'vera_lambda_b'}:
      raise InteropError(f'{weights}: {PEFT_PREFIX}{module} lacks some of its VeRA tensors (has '
                         f'{sorted(found)}).')
    if len(sites_of[module]) > 1:
      raise InteropError(f'{weights}: VeRA on GPT-2\'s fused {module} has one lambda_d and one slice of '
                         'vera_B for query, key and value together, which our separate projections do '
                         'not share; only other modules (attention output, FFN) map.')
    stem = f'{sites_of[module][0]}/adapters/{name}/'
    leaves[stem + 'lambda_d'] = (np.asarray(found['vera_lambda_d'], np.float32), 'parallel')
    leaves[stem + 'lambda_b'] = (np.asarray(found['vera_lambda_b'], np.float32), 'parallel')
  vera_a, vera_b = (np.asarray(projections[k], np.float32) for k in VERA_PROJECTIONS)
  shared = {shared_path(name, STORED_LEAVES[0]): np.ascontiguousarray(vera_a.T),   # [N, r]
            shared_path(name, STORED_LEAVES[1]): np.ascontiguousarray(vera_b.T)}   # [r, M]

  def make(sites, train_also):
    return VeRAConfig(sites=sites, rank=int(config['r']), projection_seed=int(config['projection_prng_key']),
                      d_initial=float(config['d_initial']), dropout=float(config['vera_dropout']),
                      stored_projections=True, train_also=train_also)

  return make, leaves, shared


def _ia3(config, by_module, sites_of, name):
  """`(method maker, {leaf path: (value, placement)})` of an (IA)3 file."""
  leaves = {}
  for module, found in by_module.items():
    value, sites = found['ia3_l'], sites_of[module]
    if _is_feedforward(config, module):
      if len(sites) > 1:
        raise InteropError(f'(IA)3 on the input of {module} scales query, key and value alike; our '
                           'separate projections take output-side (IA)3 only there.')
      leaves[f'{sites[0]}/adapters/{name}/scale'] = (value[0, :], 'input')  # [1, in] -> [in]
      continue
    for site, part in zip(sites, np.split(value[:, 0], len(sites)), strict=True):
      if len(sites) == 1 or not np.all(part == 1.0):  # an all-ones third of c_attn changes nothing
        leaves[f'{site}/adapters/{name}/scale'] = (part, 'output')  # [out, 1] -> [out]

  def make(sites, train_also):
    return IA3Config(sites=sites, train_also=train_also)

  return make, leaves


def _site_rules(placements: dict[str, str]) -> tuple[tuple[str, str], ...]:
  """One site rule per (stack, site in a layer, placement), listing the layers it covers."""
  layers_by_kind: dict[tuple[str, str, str], set[int]] = {}
  for site, placement in placements.items():
    stack, layer, inner = locate_site(site)
    layers_by_kind.setdefault((stack, inner, placement), set()).add(layer)
  return tuple((rf'(.*/)?{stack}/layer_({"|".join(str(i) for i in sorted(layers))})/{inner}', placement)
               for (stack, inner, placement), layers in sorted(layers_by_kind.items()))


def _refuse(config: dict, where: pathlib.Path) -> None:
  """Refuses every PEFT option with no exact equivalent, naming it."""
  checks = {'lora_bias': (False, 'LoRA B has no bias here'), 'bias': ('none', 'base biases stay frozen'),
            'layer_replication': (None, 'no layer replication'), 'target_parameters': (None, 'modules only')}
  for option, (value, reason) in checks.items():
    if option in config and config[option] != value:
      raise InteropError(f'{where}: {option}={config[option]!r} cannot be represented here ({reason}); '
                         f'only {option}={value!r} maps exactly.')


def _is_feedforward(config: dict, module: str) -> bool:
  """PEFT's own rule: a regex string is full-matched, a list is matched as name suffixes."""
  feedforward = config['feedforward_modules'] or []
  if isinstance(feedforward, str):
    return bool(re.fullmatch(feedforward, module))
  return any(module.endswith(target) for target in feedforward)
