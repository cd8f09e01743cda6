"""Our LoRA, DoRA, VeRA and (IA)3 on decoders and T5, exported to PEFT and loaded there (peft 0.21.2
on transformers' PyTorch models of the same weights): the same logits."""

import json

import numpy as np
import peft
import pytest

from adapters_jax.interop import InteropError
from adapters_jax.splicing.sites import (
  ATTENTION_OUTPUT,
  FFN_GATE,
  FFN_INTERMEDIATE,
  FFN_OUTPUT,
  KEY,
  QUERY,
  VALUE,
)
from tests.interop.lm_bases import (
  DECODERS,
  assert_close,
  export,
  peft_logits,
  torch_logits,
)

ALL_LINEAR = tuple((site, 'parallel') for site in (QUERY, KEY, VALUE, ATTENTION_OUTPUT, FFN_GATE,
                                                   FFN_INTERMEDIATE, FFN_OUTPUT))
GPT2_LINEAR = tuple((site, 'parallel') for site in (QUERY, KEY, VALUE, ATTENTION_OUTPUT, FFN_INTERMEDIATE,
                                                    FFN_OUTPUT))


@pytest.mark.parametrize('family', DECODERS)
def test_lora_on_every_projection_loads_in_peft_with_our_logits(tmp_path, lm_base_dir, family):
  # GPT-2: query/key/value become one block-structured rank-3r LoRA on the fused c_attn.
  sites = GPT2_LINEAR if family == 'gpt2' else ALL_LINEAR
  ours, base, exported = export(tmp_path, lm_base_dir, family, 'lora', sites=sites, rank=2, alpha=5.0)
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['task_type'] == 'CAUSAL_LM' and config['modules_to_save'] is None
  assert config['fan_in_fan_out'] == (family == 'gpt2')
  assert_close(ours, peft_logits(lm_base_dir(family), exported, family), base)


def test_gpt2_lora_on_query_and_value_is_a_rank_2r_c_attn_lora(tmp_path, lm_base_dir):
  ours, base, exported = export(tmp_path, lm_base_dir, 'gpt2', 'lora', rank=3, alpha=4.0, use_rslora=True)
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['rank_pattern'] == {'transformer.h.0.attn.c_attn': 6, 'transformer.h.1.attn.c_attn': 6}
  assert_close(ours, peft_logits(lm_base_dir('gpt2'), exported, 'gpt2'), base)


def test_t5_lora_opens_with_auto_peft_seq2seq_class(tmp_path, lm_base_dir):
  # Encoder and decoder self-attention, cross-attention, and both gated FFN input projections.
  sites = tuple((site, 'parallel') for site in (QUERY, VALUE, ATTENTION_OUTPUT, FFN_INTERMEDIATE,
                                                r'(.*/)?layer_\d+/ffn/intermediate_linear', FFN_OUTPUT))
  ours, base, exported = export(tmp_path, lm_base_dir, 't5', 'lora', sites=sites, rank=2, alpha=4.0)
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['task_type'] == 'SEQ_2_SEQ_LM'
  assert 'decoder.block.1.layer.1.EncDecAttention.q' in config['target_modules']
  assert 'encoder.block.0.layer.1.DenseReluDense.wi_0' in config['target_modules']
  model = peft.AutoPeftModelForSeq2SeqLM.from_pretrained(str(exported)).eval()
  assert_close(ours, torch_logits(model, 't5'), base)


def test_llama_lora_opens_with_auto_peft_causal_lm_class(tmp_path, lm_base_dir):
  ours, base, exported = export(tmp_path, lm_base_dir, 'llama', 'lora', rank=4, alpha=8.0)
  model = peft.AutoPeftModelForCausalLM.from_pretrained(str(exported)).eval()
  assert_close(ours, torch_logits(model, 'llama'), base)


CASES = [
    ('llama', 'dora', dict(sites=ALL_LINEAR, rank=2, alpha=3.0)),
    ('gpt2', 'dora', dict(sites=GPT2_LINEAR, rank=2, alpha=3.0)),  # DoRA on the whole fused c_attn
    ('qwen2', 'vera', dict(sites=ALL_LINEAR, rank=8, projection_seed=3)),  # sites of different widths
    ('llama', 'ia3', dict(sites=((KEY, 'output'), (VALUE, 'output'), (FFN_OUTPUT, 'input')))),
    ('gpt2', 'ia3', dict(sites=((KEY, 'output'), (VALUE, 'output'), (FFN_OUTPUT, 'input')))),
]


@pytest.mark.parametrize('family,method,options', CASES, ids=[f'{c[0]}-{c[1]}' for c in CASES])
def test_dora_vera_and_ia3_load_in_peft_with_our_logits(tmp_path, lm_base_dir, family, method, options):
  ours, base, exported = export(tmp_path, lm_base_dir, family, method, **options)
  if method == 'vera':  # our projections come from a JAX seed: the file carries them
    assert json.loads((exported / 'adapter_config.json').read_text())['save_projection'] is True
  assert_close(ours, peft_logits(lm_base_dir(family), exported, family), base)


def test_gpt2_vera_on_query_is_refused(tmp_path, lm_base_dir):
  with pytest.raises(InteropError, match='fused transformer.h.0.attn.c_attn has one lambda_d'):
    export(tmp_path, lm_base_dir, 'gpt2', 'vera', rank=4)


def test_gpt2_dora_on_part_of_c_attn_is_refused(tmp_path, lm_base_dir):
  with pytest.raises(InteropError, match='needs all of query, key and value'):
    export(tmp_path, lm_base_dir, 'gpt2', 'dora', rank=2)


def test_a_causal_lm_export_leaves_out_trained_layer_norms_and_says_so(tmp_path, lm_base_dir, caplog):
  ours, _, exported = export(tmp_path, lm_base_dir, 'llama', 'lora', rank=2,
                             train_also=(r'.*layer_norm/scale',))
  assert 'left out' in caplog.text and 'attention_layer_norm/scale' in caplog.text
  config = json.loads((exported / 'adapter_config.json').read_text())
  assert config['modules_to_save'] is None
  assert not np.allclose(ours, peft_logits(lm_base_dir('llama'), exported, 'llama'), atol=1e-3)
