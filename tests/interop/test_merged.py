"""`write_merged`: a spliced model written as a whole Hugging Face folder with its adapter folded in,
loaded by transformers' PyTorch models (no remote code), per family and method: their logits are ours."""

import jax
import numpy as np
import pytest
import torch
import transformers

from adapters_jax import add_adapter, get_method
from adapters_jax.interop import InteropError, write_merged
from adapters_jax.models import load_pretrained
from adapters_jax.splicing.sites import ATTENTION_OUTPUT, FFN_OUTPUT, LAYER_NORM_PARAMS, QUERY, VALUE
from tests.interop.conftest import (
  TOLERANCE,
  load_ours,
  our_logits,
  torch_logits,
  trained_adapter,
)
from tests.methods.splice_checks import perturb
from tests.models import decoder_checkpoints, t5_reference

ENCODER_CASES = [
    ('bert', 'lora', dict(rank=4, alpha=8.0, train_also=(LAYER_NORM_PARAMS,))),
    ('bert', 'lora', dict(rank=2, alpha=4.0, init_weights='pissa')),
    ('roberta', 'dora', dict(rank=2, sites=((QUERY, 'parallel'), (FFN_OUTPUT, 'parallel')))),
    ('bert', 'vera', dict(rank=8)),
    ('roberta', 'ia3', {}),  # outputs (keys, values) and an input (the FFN's second projection)
]


@pytest.mark.parametrize('family,method,options', ENCODER_CASES,
                         ids=['bert-lora', 'bert-pissa', 'roberta-dora', 'bert-vera', 'roberta-ia3'])
def test_encoder_with_head_loads_in_transformers(tmp_path, base_dir, family, method, options):
  spliced, params, _ = trained_adapter(base_dir(family), family, 'task', get_method(method, **options))
  pretrained = load_ours(base_dir(family))
  out = write_merged(tmp_path / 'merged', pretrained, spliced, params, 'task',
                     label_names=('neg', 'neutral', 'pos'))
  model = transformers.AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=False)
  assert model.config.id2label == {0: 'neg', 1: 'neutral', 2: 'pos'}
  ours = our_logits(spliced, params, family, 'task')
  np.testing.assert_allclose(torch_logits(model.eval(), family), ours, atol=TOLERANCE, rtol=0)
  base = torch_logits(transformers.AutoModelForSequenceClassification.from_pretrained(
      base_dir(family)).eval(), family)
  assert np.abs(ours - base).max() > 1e-2  # the adapter (and head) changed something


def _torch_out(model, *args):
  with torch.no_grad():
    return model(*(torch.tensor(np.asarray(a), dtype=torch.long) for a in args)).logits.numpy()


def test_t5_loads_as_seq2seq_lm(tmp_path):
  directory = t5_reference.save(t5_reference.torch_t5('v1.1'), tmp_path / 't5')
  pretrained = load_pretrained(str(directory), load_tokenizer=False)
  ids, mask = t5_reference.encoder_batch()
  decoder_ids = ids[:, :5]
  method = get_method('lora', rank=2, sites=((QUERY, 'parallel'), (VALUE, 'parallel'),
                                             (ATTENTION_OUTPUT, 'parallel')))
  spliced, params = add_adapter(pretrained.model, pretrained.params, 'a', method, jax.random.key(0),
                                ids, mask, decoder_ids)
  params = perturb(params, 'a')
  ours = np.asarray(spliced.apply(params, ids, mask, decoder_ids, active='a'))
  out = write_merged(tmp_path / 'merged', pretrained, spliced, params, 'a')
  model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  theirs = t5_reference.torch_logits(model, ids, mask, decoder_ids)
  np.testing.assert_allclose(theirs, ours, atol=TOLERANCE, rtol=0)
  assert np.abs(ours - t5_reference.torch_logits(
      transformers.AutoModelForSeq2SeqLM.from_pretrained(directory).eval(), ids, mask,
      decoder_ids)).max() > 1e-2


@pytest.mark.parametrize('family,method,options', [
    ('gpt2', 'lora', dict(rank=2, init_weights='olora')),  # GPT-2's fused c_attn, refused back
    ('llama', 'ia3', {}),
])
def test_decoder_loads_as_causal_lm(tmp_path, family, method, options):
  directory = decoder_checkpoints.save(decoder_checkpoints.torch_model(family), tmp_path / family)
  pretrained = load_pretrained(str(directory), load_tokenizer=False)
  ids = np.random.default_rng(0).integers(3, 97, size=(2, 9)).astype(np.int32)
  spliced, params = add_adapter(pretrained.model, pretrained.params, 'a', get_method(method, **options),
                                jax.random.key(0), ids)
  params = perturb(params, 'a')
  ours = np.asarray(spliced.apply(params, ids, active='a'))
  out = write_merged(tmp_path / 'merged', pretrained, spliced, params, 'a')
  theirs = _torch_out(transformers.AutoModelForCausalLM.from_pretrained(out).eval(), ids)
  np.testing.assert_allclose(theirs, ours, atol=TOLERANCE, rtol=0)
  base = _torch_out(transformers.AutoModelForCausalLM.from_pretrained(directory).eval(), ids)
  assert np.abs(ours - base).max() > 1e-2


def test_bottleneck_is_refused_in_one_line(tmp_path, base_dir):
  spliced, params, _ = trained_adapter(base_dir('bert'), 'bert', 'task', get_method('houlsby', size=4))
  with pytest.raises(InteropError) as error:
    write_merged(tmp_path / 'merged', load_ours(base_dir('bert')), spliced, params, 'task')
  assert '\n' not in str(error.value) and 'cannot be merged' in str(error.value)
  assert not (tmp_path / 'merged').exists()
