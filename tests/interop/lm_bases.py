"""Tiny transformers causal LMs (GPT-2, Llama, Qwen2, Mistral, Gemma) and T5 v1.1, saved as HF
checkpoints, and helpers that compare our logits with PEFT's on the same adapter."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import peft
import torch
import transformers
from flax import traverse_util

from adapters_jax import add_adapter, get_method, models, save_adapter
from adapters_jax.interop import export_checkpoint
from adapters_jax.splicing import trainable
from tests.models import decoder_checkpoints, t5_reference

DECODERS = ('gpt2', 'llama', 'qwen2', 'mistral', 'gemma')
TOLERANCE = 1e-4


def make_base(family: str, directory: pathlib.Path) -> pathlib.Path:
  """A tiny random transformers model of `family` (a decoder or `t5`) saved in `directory`."""
  if family == 't5':
    return t5_reference.save(t5_reference.torch_t5('v1.1'), directory)
  return decoder_checkpoints.save(decoder_checkpoints.torch_model(family), directory)


def inputs(family: str) -> tuple[np.ndarray, ...]:
  """One batch: decoders `(ids, mask)` `[2, 6]`; T5 `(ids, mask, decoder_ids)` `[2, 7]`, `[2, 5]`
  with a padded second encoder row."""
  rng = np.random.default_rng(0)
  if family == 't5':
    ids, mask = t5_reference.encoder_batch(batch=2, length=7)
    return ids, mask, rng.integers(2, t5_reference.TINY_T5['vocab_size'], (2, 5)).astype(np.int32)
  ids = rng.integers(3, 97, (2, 6)).astype(np.int32)
  return ids, np.ones_like(ids)


def load_ours(directory) -> models.Pretrained:
  return models.load_pretrained(str(directory), load_tokenizer=False)


def trained_adapter(directory, family, name, method, seed=1):
  """Our base with `method` spliced as `name` and every trained leaf random: `(spliced, params, mask)`.

  Scaling vectors are drawn around 1, DoRA magnitudes around their initial column norms."""
  base = load_ours(directory)
  spliced, params = add_adapter(base.model, base.params, name, method, jax.random.key(0), *inputs(family))
  mask = trainable.make_mask(params, trainable.adapter_rules([spliced.adapter(name)]))
  flat = traverse_util.flatten_dict(params, sep='/')
  flat_mask = traverse_util.flatten_dict(mask, sep='/')
  rng = np.random.default_rng(seed)
  for path, value in flat.items():
    if flat_mask[path]:
      noise = rng.normal(0.0, 0.3, value.shape).astype(np.float32)
      if path.endswith('/scale'):
        flat[path] = jnp.asarray(1.0 + noise)
      elif path.endswith('/magnitude'):
        flat[path] = value * (1.0 + noise)
      else:
        flat[path] = jnp.asarray(noise)
  return spliced, traverse_util.unflatten_dict(flat, sep='/'), mask


def save_trained(workdir, directory, family, name, method):
  """What a run's `workdir/best` holds for `method` with random leaves: `(spliced, params, checkpoint)`."""
  spliced, params, mask = trained_adapter(directory, family, name, method)
  checkpoint = save_adapter(workdir / 'best', spliced, params, name, mask=mask, base_name=str(directory))
  return spliced, params, checkpoint


def export(tmp_path, lm_base_dir, family, method, **options):
  """`(our adapter logits, our base logits, PEFT export directory)` of a random `method` adapter
  (`get_method(method, **options)`) on `lm_base_dir(family)`."""
  spliced, params, checkpoint = save_trained(tmp_path / 'run', lm_base_dir(family), family, 'task',
                                             get_method(method, **options))
  exported = export_checkpoint(checkpoint, 'peft', tmp_path / 'peft')
  return our_logits(spliced, params, family, 'task'), our_logits(spliced, params, family), exported


def our_logits(spliced, params, family, name=None) -> np.ndarray:
  """`[2, seq, vocab]` float32 (`name=None`: the base model); jitted, which compiles faster than
  the first eager call of a spliced model."""
  return np.asarray(jax.jit(lambda p, *args: spliced.apply(p, *args, active=name))(params, *inputs(family)))


def torch_base(directory, family):
  cls = transformers.T5ForConditionalGeneration if family == 't5' else transformers.AutoModelForCausalLM
  return cls.from_pretrained(str(directory)).eval()


def torch_logits(model, family) -> np.ndarray:
  arrays = [torch.tensor(a, dtype=torch.long) for a in inputs(family)]
  names = ('input_ids', 'attention_mask', 'decoder_input_ids')
  with torch.no_grad():
    return model(**dict(zip(names, arrays, strict=False))).logits.float().numpy()


def peft_logits(directory, exported, family) -> np.ndarray:
  """Logits of `peft.PeftModel.from_pretrained` on transformers' model of `directory`."""
  return torch_logits(peft.PeftModel.from_pretrained(torch_base(directory, family), str(exported)).eval(),
                      family)


def randomize_torch(model, selects, around_one=lambda name: False, seed=2):
  """Sets every parameter whose name `selects` accepts to random values; `around_one` picks those
  drawn around 1 ((IA)3 vectors, DoRA magnitudes)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if selects(name):
        noise = torch.randn(param.shape, generator=generator) * 0.3
        param.copy_(1.0 + noise if around_one(name) else noise)


def assert_close(ours, theirs, base):
  """Logits agree within TOLERANCE, and the adapter really changed them (not two base models)."""
  np.testing.assert_allclose(ours, theirs, atol=TOLERANCE, rtol=0)
  assert np.abs(ours - base).max() > 1e-2, 'the adapter did not change the logits'
