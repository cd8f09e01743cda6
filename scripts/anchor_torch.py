"""PyTorch anchors: train-step throughput of the PyTorch adapter libraries on the same shapes as ours.

Measures examples/s of one optimizer step (forward + backward + AdamW) of a BERT encoder with a
classification head, random init, fixed shapes, for: full fine-tuning; Houlsby adapters
(AdapterHub `adapters`, two bottlenecks per layer, size 64, GELU, layer norms and head trained, as
google-research/adapter-bert); Pfeiffer (`seq_bn`: after the FFN, reduction 16, ReLU); LoRA r=8,
alpha=16 on query/value (`peft`, head trained). Prints one line per method, then the results as
one JSON line (what `scripts/bench.py --anchors` reads).

Runs in its own virtual environment (torch, adapters, peft), built by `scripts/setup_anchor.sh`;
the test suite does not need it.

    .anchor-venv/bin/python scripts/anchor_torch.py --model minilm --batch 8 --seq 128 --steps 10
"""

import argparse
import json
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

DIMS = {
    'minilm': dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536),
    'base': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}


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
  raise ValueError(f'unknown method {method!r}; valid: full, houlsby, pfeiffer, lora')


def time_method(method: str, config: BertConfig, batch: int, seq: int, steps: int) -> dict:
  """Median step time after two warm-up steps, and parameter counts."""
  model = build(method, config)
  model.train()
  params = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(params, lr=1e-4)
  ids = torch.randint(0, config.vocab_size, (batch, seq))
  mask = torch.ones_like(ids)
  labels = torch.randint(0, 2, (batch,))

  def step():
    optimizer.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
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
  return dict(step_s=median, ex_per_s=batch / median, trainable=sum(p.numel() for p in params),
              total=sum(p.numel() for p in model.parameters()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='minilm', choices=sorted(DIMS))
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seq', type=int, default=128)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--methods', default='full,houlsby,pfeiffer,lora')
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  config = BertConfig(vocab_size=30522, num_labels=2, **DIMS[args.model])
  results = {}
  for method in args.methods.split(','):
    r = results[method] = time_method(method, config, args.batch, args.seq, args.steps)
    print(f'{method:9s} median step {r["step_s"] * 1000:8.1f} ms  {r["ex_per_s"]:7.1f} ex/s  '
          f'trainable {r["trainable"]:,} / {r["total"]:,}', flush=True)
  print(json.dumps(results))


if __name__ == '__main__':
  main()
