"""A written Llama checkpoint gives the same logits in our loader and in transformers' PyTorch
`LlamaForCausalLM` (the independent reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from adapters_jax.models import load_pretrained, resolve_checkpoint_dir
from adapters_jax.models.decoder_export import random_decoder_checkpoint

TINY = dict(model_type='llama', vocab_size=30522, hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, bos_token_id=101, eos_token_id=102, pad_token_id=0)


def test_random_checkpoint_round_trips_and_matches_pytorch(tmp_path):
  # Bug caught: a kernel written untransposed, q/k swapped, or a norm left out of the file.
  directory = random_decoder_checkpoint(tmp_path / 'tiny', TINY, seed=3,
                                        tokenizer_dir=resolve_checkpoint_dir('minilm-l6'))
  pre = load_pretrained(str(directory))
  ids = pre.tokenizer(['the vaults is a pub'], return_tensors='np')['input_ids'].astype(np.int32)
  ours = np.asarray(jax.jit(pre.model.apply)({'params': pre.params}, jnp.asarray(ids)))
  reference = transformers.LlamaForCausalLM.from_pretrained(str(directory)).eval()
  with torch.no_grad():
    expected = reference(torch.from_numpy(ids).long()).logits.numpy()
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
  assert np.abs(ours).max() > 1e-3  # random weights, not zeros
