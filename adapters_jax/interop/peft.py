"""PEFT format: `adapter_config.json` + `adapter_model.safetensors` (`save_pretrained` of a PeftModel).

What maps exactly (checked against `peft` 0.21.2 on transformers' PyTorch BERT/RoBERTa, GPT-2,
Llama, Qwen2, Mistral, Gemma and T5; module names: `peft_names`):

  ours                          PEFT (`<m>` = `base_model.model.<module>`)
  lora                          LORA: `<m>.lora_A.weight [r, in]`, `<m>.lora_B.weight [out, r]`,
                                update (lora_alpha / r) B A (`use_rslora`: alpha / sqrt(r))
  dora                          LORA with `use_dora`: the same, plus `<m>.lora_magnitude_vector [out]`
  vera                          VERA: `<m>.vera_lambda_b [out]`, `<m>.vera_lambda_d [r]`, and the shared
                                projections `base_model.vera_A [r, max in]`, `base_model.vera_B [max out, r]`
                                (`save_projection`: ours are drawn from a JAX seed, PEFT's from torch's;
                                an imported VeRA's `stored_projections` are written back as they are)
  ia3 `output` / `input`        IA3: `<m>.ia3_l` `[out, 1]`, or `[1, in]` for `feedforward_modules`
  trained head / layer norms    `modules_to_save` (BERT/RoBERTa only)

GPT-2's query, key and value are one Conv1D module, `c_attn` (`fan_in_fan_out`): LoRA/DoRA there is
one LoRA of rank k r (k = how many of the three carry one) whose B is block-structured, so each third
of the output sees only its own rank-r update; `rank_pattern`/`alpha_pattern` keep the scaling.
(IA)3 output vectors concatenate (a third without one is all ones). VeRA and input-side (IA)3 on
`c_attn` have no exact form (one `lambda_d`, one input) and are refused.

An export for a decoder or T5 is what vLLM loads (LoRA only, `modules_to_save` null): trained layer
norms are left out, with a warning naming them. Prompt tuning is PEFT's PROMPT_TUNING and prefix
tuning (`positions='after_prefix'`) its PREFIX_TUNING (`peft_prompts`). Import: `peft_import`.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from adapters_jax import models
from adapters_jax.interop import peft_prompts
from adapters_jax.interop.naming import (
  MODEL_PREFIXES,
  InteropError,
  base_leaf_to_hf,
  base_leaf_value_to_hf,
  torch_linear,
)
from adapters_jax.interop.peft_names import ENCODER_MODEL_TYPES, FUSED_PARTS, site_to_module, task_type
from adapters_jax.interop.portable import PortableAdapter, base_hf_config, base_metadata
from adapters_jax.methods.vera import STORED_LEAVES, vera_projections
from adapters_jax.models.hf_files import write_safetensors
from adapters_jax.models.registry import portable_name
from adapters_jax.splicing.tree import shared_path

CONFIG_FILE, WEIGHTS_FILE = 'adapter_config.json', 'adapter_model.safetensors'
PEFT_PREFIX = 'base_model.model.'
KINDS = ('dora', 'ia3', 'lora', 'prefix_tuning', 'prompt_tuning', 'vera')
log = logging.getLogger(__name__)


def export_adapter(adapter: PortableAdapter, out: str | pathlib.Path, model_type: str) -> pathlib.Path:
  """Writes `adapter` (LoRA, DoRA, VeRA, (IA)3, prompt or prefix tuning) as a PEFT directory for a
  transformers `model_type`.

  `out` is an existing empty directory (`convert.export_checkpoint` stages it). Load it with
  `peft.PeftModel.from_pretrained(<transformers model>, out)`, or with the class its `task_type`
  names (`peft.AutoPeftModelForCausalLM.from_pretrained(out)`), which loads the base from
  `base_model_name_or_path`: the hub id of a packaged base, or a local base's absolute path.
  """
  method = adapter.method
  if method.kind not in KINDS:
    raise InteropError(f'Method kind {method.kind!r} has no PEFT equivalent; PEFT exports: {list(KINDS)} '
                       '(use --format=adapters for bottleneck and Compacter adapters).')
  if method.kind in ('prompt_tuning', 'prefix_tuning'):
    export = peft_prompts.export_prompt if method.kind == 'prompt_tuning' else peft_prompts.export_prefix
    config, tensors = export(adapter, model_type, base_hf_config(adapter))
    return _write(adapter, out, model_type, config, tensors, peft_prompts.PROMPT_PREFIX)
  if getattr(method, 'use_gating', False):
    raise InteropError('A gated LoRA (use_gating=True, UniPELT\'s gate) has no PEFT equivalent; '
                       'export an ungated one.')
  hf_config = base_hf_config(adapter)
  gated = model_type == 't5' and _t5_is_gated(adapter, hf_config)
  modules: dict[str, dict[int | None, str]] = {}  # module -> {part: site}
  for path in adapter.sites:
    module = site_to_module(path, model_type, gated_t5=gated)
    modules.setdefault(module.name, {})[module.part] = path
  leaf = lambda site, name: adapter.leaves[f'{site}/adapters/{adapter.name}/{name}']
  tensors: dict[str, np.ndarray] = {}
  config: dict = {'rank_pattern': {}, 'alpha_pattern': {}} if method.kind in ('lora', 'dora') else {}
  feedforward = []
  for module, parts in modules.items():
    key = PEFT_PREFIX + module
    if method.kind in ('lora', 'dora'):
      a, b, magnitude, rank = _low_rank(parts, leaf, method.kind, module)
      tensors[key + '.lora_A.weight'], tensors[key + '.lora_B.weight'] = a, b
      if magnitude is not None:
        tensors[key + '.lora_magnitude_vector'] = magnitude
      if rank != method.rank:  # fused: k r with the same scaling
        k = rank // method.rank
        config['rank_pattern'][module] = rank
        config['alpha_pattern'][module] = method.alpha * (math.sqrt(k) if method.use_rslora else k)
    elif method.kind == 'ia3':
      scale, on_input = _ia3(parts, leaf, adapter.sites, module)
      tensors[key + '.ia3_l'] = scale
      if on_input:
        feedforward.append(module)
    else:
      if None not in parts:
        raise InteropError(f'VeRA at GPT-2\'s query/key/value cannot be exported: PEFT\'s fused {module} '
                           'has one lambda_d and one slice of the projections for all three; choose other '
                           'sites (attention output, FFN).')
      tensors[key + '.vera_lambda_b'] = np.asarray(leaf(parts[None], 'lambda_b'), np.float32)
      tensors[key + '.vera_lambda_d'] = np.asarray(leaf(parts[None], 'lambda_d'), np.float32)
  if method.kind == 'vera':
    tensors.update(_vera_projections(adapter, modules, hf_config, model_type, tensors))
  config.update({
      'peft_type': {'lora': 'LORA', 'dora': 'LORA', 'vera': 'VERA', 'ia3': 'IA3'}[method.kind],
      'target_modules': sorted(modules), 'fan_in_fan_out': model_type == 'gpt2',
  })
  if method.kind in ('lora', 'dora'):
    config.update({'r': method.rank, 'lora_alpha': method.alpha, 'lora_dropout': method.dropout,
                   'bias': 'none', 'use_rslora': method.use_rslora, 'use_dora': method.kind == 'dora',
                   'init_lora_weights': True})
  elif method.kind == 'vera':
    config.update({'r': method.rank, 'projection_prng_key': method.projection_seed, 'save_projection': True,
                   'vera_dropout': method.dropout, 'd_initial': method.d_initial, 'bias': 'none',
                   'init_weights': True})
  else:
    config.update({'feedforward_modules': sorted(feedforward), 'init_ia3_weights': True})
  return _write(adapter, out, model_type, config, tensors, PEFT_PREFIX)


def _write(adapter, out, model_type, config, tensors, key_prefix) -> pathlib.Path:
  """Adds the trained head / layer norms (under `key_prefix`) and the fields every PEFT type has,
  then writes the directory."""
  modules_to_save = _base_leaves(adapter, model_type, tensors, key_prefix)
  config.update({
      'task_type': task_type(model_type, has_head=any(m.startswith('classifier') for m in modules_to_save)),
      'base_model_name_or_path': portable_name(adapter.base['name']) if adapter.base.get('name') else None,
      'revision': adapter.base.get('revision') or None, 'inference_mode': True,
      'modules_to_save': sorted(modules_to_save) or None,
  })
  out = pathlib.Path(out)
  (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + '\n')
  write_safetensors(out / WEIGHTS_FILE, tensors, base_metadata(adapter))
  return out


def _low_rank(parts, leaf, kind, module):
  """`(lora_A [R, in], lora_B [out, R], magnitude [out] or None, R)` of one module; for GPT-2's
  fused `c_attn`, A stacks the parts' A and B is block-structured (zero outside each part's block)."""
  if None in parts:
    site = parts[None]
    magnitude = np.asarray(leaf(site, 'magnitude'), np.float32) if kind == 'dora' else None
    a = torch_linear(leaf(site, 'lora_a'))
    return a, torch_linear(leaf(site, 'lora_b')), magnitude, a.shape[0]
  if kind == 'dora' and len(parts) != len(FUSED_PARTS):
    raise InteropError(f'DoRA on {module} needs all of query, key and value (PEFT normalises the whole '
                       f'fused weight); this adapter has {[FUSED_PARTS[p] for p in sorted(parts)]}.')
  present = sorted(parts)
  a_parts = [torch_linear(leaf(parts[p], 'lora_a')) for p in present]  # [r, in] each
  b_parts = [torch_linear(leaf(parts[p], 'lora_b')) for p in present]  # [h, r] each
  rank, width = a_parts[0].shape[0], b_parts[0].shape[0]
  b = np.zeros((len(FUSED_PARTS) * width, rank * len(present)), np.float32)
  for column, (p, b_part) in enumerate(zip(present, b_parts, strict=True)):
    b[p * width:(p + 1) * width, column * rank:(column + 1) * rank] = b_part
  magnitude = None
  if kind == 'dora':
    magnitude = np.concatenate([np.asarray(leaf(parts[p], 'magnitude'), np.float32) for p in present])
  return np.concatenate(a_parts, axis=0), b, magnitude, rank * len(present)


def _ia3(parts, leaf, sites, module):
  """`(ia3_l, on_input)`: `[out, 1]` (output placement) or `[1, in]` (input placement)."""
  if None in parts:
    site = parts[None]
    scale = np.asarray(leaf(site, 'scale'), np.float32)
    on_input = sites[site] == 'input'
    return (scale[None, :] if on_input else scale[:, None]), on_input
  if any(sites[site] == 'input' for site in parts.values()):
    raise InteropError(f'(IA)3 on the input of GPT-2\'s query/key/value cannot be exported: PEFT\'s fused '
                       f'{module} has one input, so one vector for all three; use output placement there.')
  scales = {p: np.asarray(leaf(site, 'scale'), np.float32) for p, site in parts.items()}
  width = next(iter(scales.values())).shape[0]
  ones = np.ones(width, np.float32)
  return np.concatenate([scales.get(p, ones) for p in range(len(FUSED_PARTS))])[:, None], False


def _vera_projections(adapter, modules, hf_config, model_type, tensors) -> dict[str, np.ndarray]:
  """PEFT's shared `vera_A [r, N]` / `vera_B [M, r]` (N, M: the widest site's in/out): our stored
  projections as they are (`stored_projections`, sliced per site as PEFT slices), or drawn from our seed.

  Seeded ones scale A by sqrt(6 / in) of each site, PEFT's by sqrt(6 / N) for all: the ratio
  sqrt(N / in) moves into each site's `vera_lambda_d`, so every site's update is unchanged.
  """
  method = adapter.method
  if method.stored_projections:
    a, b = (adapter.leaves[shared_path(adapter.name, leaf)] for leaf in STORED_LEAVES)  # [N, r], [r, M]
    return {'base_model.vera_A': np.ascontiguousarray(np.asarray(a, np.float32).T),
            'base_model.vera_B': np.ascontiguousarray(np.asarray(b, np.float32).T)}
  shapes = site_kernel_shapes(hf_config, model_type, adapter)
  widest_in = max(shapes[parts[None]][0] for parts in modules.values())
  widest_out = max(shapes[parts[None]][1] for parts in modules.values())
  a, b = vera_projections(method.projection_seed, widest_in, widest_out, method.rank)  # [N, r], [r, M]
  for module, parts in modules.items():
    key = f'{PEFT_PREFIX}{module}.vera_lambda_d'
    tensors[key] = (tensors[key] * math.sqrt(widest_in / shapes[parts[None]][0])).astype(np.float32)
  return {'base_model.vera_A': np.ascontiguousarray(np.asarray(a, np.float32).T),
          'base_model.vera_B': np.ascontiguousarray(np.asarray(b, np.float32).T)}


def _base_leaves(adapter, model_type, tensors, key_prefix) -> set[str]:
  """Adds trained layer norms / head to `tensors` (encoders) under `key_prefix`; returns the
  `modules_to_save`."""
  modules_to_save = set()
  base_leaves = adapter.base_leaves()
  if base_leaves and model_type not in ENCODER_MODEL_TYPES:
    log.warning('The PEFT export for %s holds the adapter only (modules_to_save null, as vLLM needs): '
                'the run\'s other trained leaves are left out: %s.', model_type, sorted(base_leaves))
    return modules_to_save
  for path, value in base_leaves.items():
    name = base_leaf_to_hf(path, model_type)
    module = name.split('.')[0] if name.startswith('classifier') else name.rsplit('.', 1)[0]
    modules_to_save.add(module.removeprefix(MODEL_PREFIXES[model_type]))
    tensors[key_prefix + name] = base_leaf_value_to_hf(path, value)
  return modules_to_save


def _t5_is_gated(adapter: PortableAdapter, hf_config: dict | None) -> bool:
  """T5 v1.1 (`gated-gelu`) names its first FFN projection `wi_0`, v1.0 `wi`."""
  if any(path.endswith('/ffn/intermediate_linear') for path in adapter.sites):
    return True
  if not any(path.endswith('/ffn/intermediate') for path in adapter.sites):
    return False
  if hf_config is None:
    raise InteropError(f'Cannot tell whether T5 base {adapter.base.get("name")!r} is gated (wi_0) or not '
                       '(wi): export on a machine that has its config.json (a short name or directory).')
  return str(hf_config.get('feed_forward_proj', 'relu')).startswith('gated-')


def site_kernel_shapes(hf_config: dict | None, model_type: str,
                       adapter: PortableAdapter) -> dict[str, tuple[int, int]]:
  """`{site path: (in, out)}` of every kernel of the base built from `hf_config` (shapes only)."""
  if hf_config is None or model_type in ENCODER_MODEL_TYPES:
    raise InteropError(f'A VeRA export needs the sites\' shapes, read from the local config.json of a '
                       f'decoder or T5 base; base {adapter.base.get("name")!r} has none here.')
  ids = jnp.zeros((1, 2), jnp.int32)
  if model_type == 't5':
    model = models.T5ForConditionalGeneration(models.T5Config.from_hf_config(hf_config))
    sample = (ids, ids, ids)
  else:
    model, sample = models.DecoderLM(models.DecoderConfig.from_hf_config(hf_config)), (ids,)
  shapes = jax.eval_shape(model.init, jax.random.key(0), *sample)['params']
  return {path.removesuffix('/kernel'): tuple(value.shape)
          for path, value in traverse_util.flatten_dict(shapes, sep='/').items() if path.endswith('/kernel')}
