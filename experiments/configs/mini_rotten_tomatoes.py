r"""A miniature adapter table that runs on a CPU: every method on MiniLM-L6 and Rotten Tomatoes.

The packaged `minilm-l6` (all-MiniLM-L6-v2, 22.7M parameters) on the packaged `rotten_tomatoes`
task: head only, full fine-tuning, Houlsby (64 and 8), Pfeiffer, parallel, LoRA, (IA)3, Compacter
and Compacter++; two learning rates per method, 3 seeds each (60 runs), best learning rate by the
mean validation accuracy over seeds, test accuracy reported as mean ± std over those seeds.

Commands (the table in docs/results/ was made with exactly these):
  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_rotten_tomatoes --launcher=local --parallel=2
  python -m experiments.report --sweep_dir=workdirs/mini_rotten_tomatoes \
      --config=experiments/configs/mini_rotten_tomatoes.py --out_dir=docs/results/mini_rotten_tomatoes

One run of the grid by hand:
  python -m experiments.train --config=experiments/configs/mini_rotten_tomatoes.py \
      --workdir=workdirs/one --config.method=houlsby --config.method_options.size=8 \
      --config.learning_rate=0.001 --config.seed=1

Size: a fixed subset of `MINI_TRAIN_EXAMPLES` (3,200) training snippets, 1 epoch = 200 steps of
16, max length 48 (length buckets 16/32/48), AdamW with 10% warmup and linear decay, one
evaluation at the end on the whole validation (1,154) and test (1,284) splits. Learning rates:
the lower rates of each method's usual range, since 200 steps of 16 is a short, noisy schedule
(in a trial run Houlsby at 3e-3 stalled at 65% for one seed; 1e-3 reached 79%).

Hardware and time: a 2-core CPU machine, two runs at a time (`--parallel=2`, ~10% more
throughput than one at a time): 1.6-5.6 minutes per run (head fastest, full fine-tuning
slowest), 96 minutes for the 60 runs measured 2026-11-28 while other jobs shared the machine for
a third of that time; about 75-80 minutes idle.
Expected (docs/results/mini_rotten_tomatoes/, test accuracy, mean ± std over 3 seeds): full
fine-tuning 80.7 ± 0.3, Houlsby (64) 78.9 ± 0.3, Houlsby (8) 78.6 ± 0.2, Pfeiffer 78.5 ± 0.9,
LoRA 78.5 ± 0.3, (IA)3 78.3 ± 0.2, parallel 76.8 ± 1.3, Compacter++ 76.5 ± 1.4, Compacter
75.8 ± 2.6, head only 66.9 ± 0.7. On this short schedule some adapter runs stay at the majority
class (60% on test), mostly at the lower rate of a pair (Houlsby (64): one seed at the higher);
the mean validation accuracy over seeds then picks the other rate.
There is no paper number for this table.

Full size (all 10,313 training snippets, the whole validation and test splits, 3 epochs, length
64; about 15-30 minutes per run on 2 cores, a few minutes on one GPU):
  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py:full_size \
      --sweep_dir=workdirs/rotten_tomatoes_full --launcher=local

Arguments: '' (miniature) or the row `full_size`, `smoke` (tests: a few steps), plus `key=value` items
(e.g. `:smoke,method_options.size=8`); any field is also `--config.<field>=<value>`.
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config

ROWS = ('full_size',)
CONFIG_ARGS = ('', 'smoke', 'full_size', 'method_options.size=8', 'full_size,smoke')

MINI_TRAIN_EXAMPLES = 3200
SEEDS = (0, 1, 2)

# Method label -> (method, method options, learning rates). Rates follow each method's usual
# range, shifted up for the short schedule: adapters need larger rates than full fine-tuning.
METHODS = {
    'head': ('head', {}, (1e-2, 3e-2)),
    'full': ('full', {}, (3e-5, 1e-4)),
    'houlsby (64)': ('houlsby', {'size': 64}, (5e-4, 1e-3)),
    'houlsby (8)': ('houlsby', {'size': 8}, (5e-4, 1e-3)),
    'pfeiffer': ('pfeiffer', {}, (5e-4, 1e-3)),
    'parallel': ('parallel', {}, (5e-4, 1e-3)),
    'lora': ('lora', {}, (5e-4, 1e-3)),
    'ia3': ('ia3', {}, (3e-3, 1e-2)),
    'compacter': ('compacter', {}, (3e-3, 1e-2)),
    'compacter++': ('compacter++', {}, (3e-3, 1e-2)),
}

PAPER = {}  # no paper: the report shows our numbers, and each method's difference to full FT
REFERENCE = 'full'
LABELS = tuple(METHODS)
TITLE = 'Miniature adapter table: MiniLM-L6 on Rotten Tomatoes (CPU)'


def get_config(arg: str = ''):
  args = parse_config_arg(arg, ROWS)
  config = run_config()
  config.max_length = 48
  config.batch_size = 16
  config.eval_batch_size = 100
  config.num_epochs = 1.0
  config.max_train_examples = MINI_TRAIN_EXAMPLES
  config.eval_every_steps = 200       # 200 steps: one evaluation, at the end
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 1
  config.log_every_steps = 10
  config.tensorboard = False
  if args.row == 'full_size':
    config.max_length = 64
    config.num_epochs = 3.0
    config.max_train_examples = -1
    config.checkpoint_every_steps = 200
  return args.apply(config, max_length=48, batch_size=16, eval_batch_size=32)


def method_label(config: dict) -> str:
  """The table row of a run's config (the `config` of its result.json)."""
  if config['method'] == 'houlsby':
    return f"houlsby ({config['method_options'].get('size', 64)})"
  return config['method']


def sweep():
  """10 methods x 2 learning rates x 3 seeds, seed-major: a sweep cut short still has every
  method and rate for the first seeds."""
  grid = []
  for seed in SEEDS:
    for method, options, rates in METHODS.values():
      for rate in rates:
        point = {'method': method}
        point.update({f'method_options.{k}': v for k, v in options.items()})
        point.update({'learning_rate': rate, 'seed': seed})
        grid.append(point)
  return grid
