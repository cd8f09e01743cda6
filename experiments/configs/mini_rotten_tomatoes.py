r"""A miniature adapter table that runs on a CPU: every method on MiniLM-L6 and Rotten Tomatoes.

The packaged `minilm-l6` (all-MiniLM-L6-v2, 22.7M parameters) on the packaged `rotten_tomatoes`
task: head only, full fine-tuning, Houlsby (64 and 8), Pfeiffer, parallel, LoRA, (IA)3, Compacter
and Compacter++; two learning rates per method, 3 seeds each (60 runs), best learning rate by the
mean validation accuracy over seeds, test accuracy reported as mean ± std over those seeds.

Commands (the table in docs/results/ was made with exactly these):
  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_rotten_tomatoes --launcher=local
  python -m experiments.report --sweep_dir=workdirs/mini_rotten_tomatoes \
      --config=experiments/configs/mini_rotten_tomatoes.py --out_dir=docs/results/mini_rotten_tomatoes

One run of the grid by hand:
  python -m experiments.train --config=experiments/configs/mini_rotten_tomatoes.py:method_options.size=8 \
      --workdir=workdirs/one --config.method=houlsby --config.learning_rate=0.003 --config.seed=1

Hardware and time: a 2-core CPU machine, one run at a time: a fixed subset of
`MINI_TRAIN_EXAMPLES` training snippets, 1 epoch (37 steps of 32), max length 48, validation and
test capped at `MINI_EVAL_EXAMPLES` examples each, evaluations at steps 19 and 37. A run costs
about 1.7 CPU-minutes (measured 2026-11-28: Houlsby 101 s user time), i.e. about 1-1.5 minutes
on an idle 2-core machine and 60-90 minutes for the 60 runs; on the shared machine the table was
made on (load 6-12 from other jobs) runs took 2-7 minutes.
Expected (docs/results/mini_rotten_tomatoes/, test accuracy): full fine-tuning 72.9 ± 3.8, Houlsby
(64) 67.3 ± 6.2 (one seed of three still at the majority class), head only ~62; with only 37 steps
the lower rate of most pairs (and zero-initialised adapters such as Pfeiffer and parallel even at
3e-3) stays at the majority class (60.2 on the test subset), so this table measures how fast each
method starts to learn, not its final quality; use `full_size` for that. There is no paper number
for this table.

Full size (all 10,313 training snippets, the whole validation and test splits, 3 epochs, length
64; about 15-30 minutes per run on 2 cores, a few minutes on one GPU):
  python -m experiments.sweep --config=experiments/configs/mini_rotten_tomatoes.py:full_size \
      --sweep_dir=workdirs/rotten_tomatoes_full --launcher=local

Arguments: '' (miniature), `full_size`, `smoke` (tests: a few steps), plus `key=value` items that
set config fields the base config lacks (the sweep passes `method_options.size=8` this way).
"""

from adapters_jax import sweeps
from experiments.configs.common import base_config

CONFIG_ARGS = ('', 'smoke', 'full_size', 'method_options.size=8')

MINI_TRAIN_EXAMPLES = 1200
MINI_EVAL_EXAMPLES = 500
SEEDS = (0, 1, 2)

# Method label -> (method, method options, learning rates). Rates follow each method's usual
# range, shifted up for the short schedule: adapters need larger rates than full fine-tuning.
METHODS = {
    'head': ('head', {}, (1e-2, 3e-2)),
    'full': ('full', {}, (5e-5, 1.5e-4)),
    'houlsby (64)': ('houlsby', {'size': 64}, (1e-3, 3e-3)),
    'houlsby (8)': ('houlsby', {'size': 8}, (1e-3, 3e-3)),
    'pfeiffer': ('pfeiffer', {}, (1e-3, 3e-3)),
    'parallel': ('parallel', {}, (1e-3, 3e-3)),
    'lora': ('lora', {}, (1e-3, 3e-3)),
    'ia3': ('ia3', {}, (3e-3, 1e-2)),
    'compacter': ('compacter', {}, (3e-3, 1e-2)),
    'compacter++': ('compacter++', {}, (3e-3, 1e-2)),
}

PAPER = {}  # no paper: the report shows our numbers, and each method's difference to full FT
REFERENCE = 'full'
LABELS = tuple(METHODS)
TITLE = 'Miniature adapter table: MiniLM-L6 on Rotten Tomatoes (CPU)'


def get_config(arg: str = ''):
  args = sweeps.parse_arg(arg)
  unknown = sweeps.flag_names(args) - {'smoke', 'full_size'}
  if unknown:
    raise ValueError(f'Unknown argument(s) {sorted(unknown)}; valid: "", "smoke", "full_size", '
                     'plus key=value items.')
  config = base_config()
  config.model = 'minilm-l6'
  config.task = 'rotten_tomatoes'
  config.method = 'houlsby'
  config.max_length = 48
  config.batch_size = 32
  config.eval_batch_size = 100
  config.num_epochs = 1.0
  config.learning_rate = 1e-3
  config.max_train_examples = MINI_TRAIN_EXAMPLES
  config.max_eval_examples = MINI_EVAL_EXAMPLES
  config.eval_every_steps = 19        # 38 steps: evaluations at 19 and 38
  config.checkpoint_every_steps = 19
  config.keep_checkpoints = 1
  config.log_every_steps = 10
  config.tensorboard = False
  if 'full_size' in args:
    config.max_length = 64
    config.num_epochs = 3.0
    config.max_train_examples = -1
    config.max_eval_examples = -1
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
  if 'smoke' in args:
    config.max_train_examples = 64
    config.max_eval_examples = 32
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_train_steps = 2
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.log_every_steps = 1
  return sweeps.apply_overrides(config, sweeps.arg_overrides(args))


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
