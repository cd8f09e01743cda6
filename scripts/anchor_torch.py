r"""PyTorch anchors: train-step throughput of the PyTorch adapter libraries on the same shapes as ours.

Measures examples/s of one optimizer step (forward + backward + AdamW) of a BERT encoder with a
classification head, random init, fixed shapes, for: full fine-tuning; Houlsby adapters
(AdapterHub `adapters`, two bottlenecks per layer, size 64, GELU, layer norms and head trained, as
google-research/adapter-bert); Pfeiffer (`seq_bn`: after the FFN, reduction 16, ReLU); LoRA r=8,
alpha=16 on query/value (`peft`, head trained); prefix tuning (AdapterHub `prefix_tuning`: 30
positions, MLP 512 with tanh, head trained); prompt tuning (`peft` `PromptTuningConfig`, 10 random
virtual tokens, head trained). Prints one line per method, then the results as one JSON line (what
`scripts/bench.py --anchors` reads).

`--model t5-small` times the same on transformers' `T5ForConditionalGeneration` of t5-small's
shape (seq2seq teacher forcing: `labels` of `--target_seq` tokens): Houlsby (`double_seq_bn`
with `cross_adapter=True`, the papers' placement our preset uses: after self-attention,
cross-attention and the FFN; layer norms trained), Pfeiffer, LoRA on q/v (self- and
cross-attention), no head. `--model llama-small` times `peft` on `LlamaForCausalLM` (hidden 512,
8 layers, 8 heads, 2 key/value heads, FFN 1408, vocab 32000), next-token loss on the input, all on
q_proj/v_proj: LoRA (r=8, alpha=16), DoRA (the same with `use_dora`), VeRA (r=256, d_initial
0.1) and QLoRA: the LoRA on a base whose linear layers bitsandbytes stores as 4-bit NF4 (blocks
of 64, float32 compute; transformers keeps the embedding and `lm_head` unquantised). Where
bitsandbytes cannot load or train, `qlora` times plain LoRA and says why in its `note`. Weights
random, dropout as the configs (T5 0.1, Llama none). Prefix tuning (`PrefixTuningConfig`: 30
virtual tokens, `prefix_projection` through a 512-wide MLP) and prompt tuning (`PromptTuningConfig`:
10 random virtual tokens) on the same Llama.

Runs in its own virtual environment (torch, adapters, peft), built by `scripts/setup_anchor.sh`;
the test suite does not need it.

    .anchor-venv/bin/python scripts/anchor_torch.py --model minilm --batch 8 --seq 128 --steps 10
    .anchor-venv/bin/python scripts/anchor_torch.py --model t5-small --batch 8 --seq 128 \
        --target_seq 32 --methods houlsby,pfeiffer,lora
    .anchor-venv/bin/python scripts/anchor_torch.py --model llama-small --batch 8 --seq 128 \
        --methods lora,qlora,dora,vera,prefix_tuning,prompt_tuning
"""

import argparse
import json
import time

import torch
from transformers import (
  BertConfig,
  BertForSequenceClassification,
  LlamaConfig,
  LlamaForCausalLM,
  T5Config,
  T5ForConditionalGeneration,
)

DIMS = {
    'minilm': dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    'base': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}
# Llama methods beside LoRA (all `peft`, on q_proj/v_proj).
LLAMA_ONLY = ('qlora', 'dora', 'vera')
# Language models: the architectures of scripts/lm_steps.py's `t5-small` and `llama-small`.
LANGUAGE_MODELS = {
    't5-small': lambda: T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                                 num_decoder_layers=6, num_heads=8, dropout_rate=0.1,
                                 feed_forward_proj='relu', tie_word_embeddings=True,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    'llama-small': lambda: LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1408,
                                       num_hidden_layers=8, num_attention_heads=8,
                                       num_key_value_heads=2, head_dim=64,
                                       tie_word_embeddings=False, attention_dropout=0.0),
}


def build_language_model(method: str, name: str):
  """t5-small (houlsby, pfeiffer, lora) or llama-small (lora), requires_grad on what trains."""
  torch.manual_seed(0)
  config = LANGUAGE_MODELS[name]()
  model = (T5ForConditionalGeneration(config) if name.startswith('t5')
           else LlamaForCausalLM(config))
  if method in ('houlsby', 'pfeiffer') and name.startswith('t5'):
    import adapters
    from adapters import DoubleSeqBnConfig, SeqBnConfig

    adapters.init(model)
    adapter_config = (DoubleSeqBnConfig(reduction_factor=config.d_model / 64,
                                        non_linearity='gelu', cross_adapter=True)
                      if method == 'houlsby' else SeqBnConfig())
    model.add_adapter('t', config=adapter_config)
    model.train_adapter('t')
    if method == 'houlsby':
      for param_name, param in model.named_parameters():
        if 'layer_norm' in param_name:
          param.requires_grad = True
    return model
  if method == 'lora' or (method in LLAMA_ONLY and not name.startswith('t5')):
    from peft import LoraConfig, VeraConfig, get_peft_model

    targets = ['q', 'v'] if name.startswith('t5') else ['q_proj', 'v_proj']
    if method == 'vera':
      return get_peft_model(model, VeraConfig(r=256, d_initial=0.1, target_modules=targets))
    if method == 'qlora':
      model = _nf4_base(model)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                            use_dora=method == 'dora'))
  if method in ('prefix_tuning', 'prompt_tuning') and not name.startswith('t5'):
    from peft import get_peft_model
    return get_peft_model(model, _peft_prompt_config(method, 'CAUSAL_LM'))
  raise ValueError(f'unknown method {method!r} for {name}; valid: '
                   f'{"houlsby, pfeiffer, lora" if name.startswith("t5") else LLAMA_METHODS}')


LLAMA_METHODS = 'lora, qlora, dora, vera, prefix_tuning, prompt_tuning'


def _peft_prompt_config(method: str, task_type: str):
  """PEFT's prefix tuning (30 virtual tokens through its 512-wide MLP, as our `prefix_tuning`
  preset) or prompt tuning (10 random virtual tokens, as our `prompt_tuning` preset)."""
  from peft import PrefixTuningConfig, PromptTuningConfig
  if method == 'prefix_tuning':
    return PrefixTuningConfig(task_type=task_type, num_virtual_tokens=30, prefix_projection=True,
                              encoder_hidden_size=512)
  return PromptTuningConfig(task_type=task_type, num_virtual_tokens=10)


def _nf4_base(model):
  """`model` reloaded with bitsandbytes' NF4 linear layers (what QLoRA trains on)."""
  import tempfile

  from transformers import BitsAndBytesConfig

  quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                    bnb_4bit_compute_dtype=torch.float32)
  with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    return type(model).from_pretrained(tmp, quantization_config=quantization, device_map='cpu')


def build(method: str, config: BertConfig):
  """The model for `method`, with requires_grad set on what trains."""
  torch.manual_seed(0)
  model = BertForSequenceClassification(config)
  if method == 'full':
    return model
  if method in ('houlsby', 'pfeiffer'):
    import adapters
    from adapters import DoubleSeqBnConfig, SeqBnConfig

    adapters.init(model)
    adapter_config = (DoubleSeqBnConfig(reduction_factor=config.hidden_size / 64,
                                        non_linearity='gelu')
                      if method == 'houlsby' else SeqBnConfig())
    model.add_adapter('t', config=adapter_config)
    model.train_adapter('t')
    for name, param in model.named_parameters():
      if name.startswith('classifier') or (method == 'houlsby' and 'LayerNorm' in name):
        param.requires_grad = True
    return model
  if method == 'lora':
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=['query', 'value'],
                                            modules_to_save=['classifier']))
  if method == 'prefix_tuning':
    import adapters
    from adapters import PrefixTuningConfig

    adapters.init(model)
    model.add_adapter('t', config=PrefixTuningConfig(prefix_length=30, bottleneck_size=512))
    model.train_adapter('t')
    for name, param in model.named_parameters():
      if name.startswith('classifier'):
        param.requires_grad = True
    return model
  if method == 'prompt_tuning':
    from peft import get_peft_model  # SEQ_CLS: peft trains the classifier too

    return get_peft_model(model, _peft_prompt_config(method, 'SEQ_CLS'))
  raise ValueError(f'unknown method {method!r}; valid: full, houlsby, pfeiffer, lora, '
                   'prefix_tuning, prompt_tuning')


def _inputs(model_name: str, vocab_size: int, batch: int, seq: int, target_seq: int) -> dict:
  """Random token ids, no padding; labels: the class (BERT), target tokens (T5), the input
  (Llama: the model shifts them)."""
  ids = torch.randint(2, vocab_size, (batch, seq))
  inputs = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
  if model_name in DIMS:
    inputs['labels'] = torch.randint(0, 2, (batch,))
  elif model_name.startswith('t5'):
    inputs['labels'] = torch.randint(2, vocab_size, (batch, target_seq))
  else:
    inputs['labels'] = ids
  return inputs


def time_method(method: str, model_name: str, batch: int, seq: int, steps: int,
                target_seq: int = 32) -> dict:
  """Median step time after two warm-up steps, and parameter counts."""
  note = None
  if model_name in DIMS:
    model = build(method, BertConfig(vocab_size=30522, num_labels=2, **DIMS[model_name]))
  elif method == 'qlora':
    try:
      model = build_language_model(method, model_name)
      _probe_step(model)
    except Exception as error:  # noqa: BLE001 - any failure of bitsandbytes here means: no QLoRA
      note = f'bitsandbytes 4-bit did not train here ({type(error).__name__}: {error}); PEFT LoRA'
      model = build_language_model('lora', model_name)
  else:
    model = build_language_model(method, model_name)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=1e-4)
  inputs = _inputs(model_name, model.config.vocab_size, batch, seq, target_seq)

  def step():
    optimizer.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    optimizer.step()

  for _ in range(2):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  median = sorted(times)[len(times) // 2]
  result = dict(step_s=median, ex_per_s=batch / median,
                trainable=sum(p.numel() for p in params),
                total=sum(p.numel() for p in model.parameters()))
  if method == 'qlora':
    result['note'] = note or 'PEFT LoRA on a bitsandbytes NF4 base'
    result['base_linear'] = type(model.get_base_model().model.layers[0].mlp.up_proj).__name__
  return result


def _probe_step(model) -> None:
  """One forward + backward on two tokens: raises where the 4-bit layers cannot train."""
  ids = torch.randint(2, model.config.vocab_size, (1, 2))
  model(input_ids=ids, labels=ids).loss.backward()
  model.zero_grad(set_to_none=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='minilm', choices=sorted(DIMS) + sorted(LANGUAGE_MODELS))
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seq', type=int, default=128)
  parser.add_argument('--target_seq', type=int, default=32, help='T5: label tokens per example')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--methods', default='full,houlsby,pfeiffer,lora')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  results = {}
  for method in args.methods.split(','):
    r = results[method] = time_method(method, args.model, args.batch, args.seq, args.steps,
                                      args.target_seq)
    print(f'{method:9s} median step {r["step_s"] * 1000:8.1f} ms  {r["ex_per_s"]:7.1f} ex/s  '
          f'trainable {r["trainable"]:,} / {r["total"]:,}', flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
