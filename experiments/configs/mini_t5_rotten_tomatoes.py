r"""A miniature sequence-to-sequence run on a CPU: a small random T5 on Rotten Tomatoes as
text-to-text (`rotten_tomatoes text: <snippet>` -> `fresh` / `rotten`).

No pretrained T5 can be installed offline, so the model is a randomly initialised T5 (2 + 2
layers, d_model 64, T5 v1.0 layout) with the packaged MiniLM tokenizer, written once by
  python scripts/make_random_t5.py --out=workdirs/random_t5
Then:
  python -m experiments.train --config=experiments/configs/mini_t5_rotten_tomatoes.py \
      --workdir=workdirs/mini_t5
  python -m experiments.sweep --config=experiments/configs/mini_t5_rotten_tomatoes.py \
      --sweep_dir=workdirs/mini_t5_sweep --launcher=local

The weights are random, so this is not a result about T5 or about adapters: it shows the
sequence-to-sequence kind's plumbing working end to end on real data (text-to-text encoding,
teacher-forced training of the adapter, cached greedy decoding, label words parsed back).

Size: `MINI_TRAIN_EXAMPLES` (1,600) training snippets, 1 epoch = 100 steps of 16, inputs cut at
48 tokens, AdamW with 10% warmup and linear decay, one evaluation at the end on a fixed subset of
`MINI_EVAL_EXAMPLES` (500) validation and test snippets.

Measured (2026-11-29, the first two commands above, Houlsby size 16: 22,048 trainable of 2,139,552
parameters; a 2-core CPU machine shared with other jobs: 292 s for the run, 5.3 minutes with
start-up): the training loss (mean of 10 steps) fell from 9.24 (steps 1-10) to 2.36 (steps
91-100); every generated answer was a label word (`unparseable` 0); validation accuracy 0.524
and test 0.602 (F1 0.688 / 0.752), which are exactly the shares of `fresh` in those subsets: the
adapter learnt to answer with a label word, always the same one, since a random encoder carries no
sentiment to learn from in 100 steps.

Arguments: '' (miniature), `smoke` (tests: a few steps), plus `key=value` items; any field is
also `--config.<field>=<value>`.
"""

from adapters_jax.config.arguments import parse_config_arg
from adapters_jax.config.schema import run_config

CONFIG_ARGS = ('', 'smoke')

MODEL_DIR = 'workdirs/random_t5'   # written by scripts/make_random_t5.py
MINI_TRAIN_EXAMPLES = 1600
MINI_EVAL_EXAMPLES = 500
# Method -> (method options, learning rate). d_model 64: Compacter's bottleneck must be a
# multiple of n=4, so it is set (8) instead of the reduction factor 32 (which gives 2).
METHODS = {
    'houlsby': ({'size': 16}, 1e-2),
    'compacter': ({'size': 8}, 1e-2),
    'compacter++': ({'size': 8}, 1e-2),
}
SEEDS = (0,)
TITLE = 'Miniature seq2seq: random T5 on Rotten Tomatoes as text-to-text (CPU)'


def get_config(arg: str = ''):
  args = parse_config_arg(arg)
  config = run_config()
  config.model = MODEL_DIR
  config.task_kind = 'seq2seq'
  config.method_options = {'size': 16}
  config.train_head = False         # T5's LM head is part of the frozen base
  config.max_length = 48
  config.batch_size = 16
  config.eval_batch_size = 100
  config.num_epochs = 1.0
  config.learning_rate = 1e-2
  config.max_train_examples = MINI_TRAIN_EXAMPLES
  config.max_eval_examples = MINI_EVAL_EXAMPLES
  config.eval_every_steps = 100      # one evaluation, at the end
  config.checkpoint_every_steps = 50
  config.keep_checkpoints = 1
  config.log_every_steps = 10
  config.tensorboard = False
  return args.apply(config, max_length=48, batch_size=8, eval_batch_size=16)


def sweep():
  """Each method once at its rate."""
  grid = []
  for seed in SEEDS:
    for method, (options, rate) in METHODS.items():
      point = {'method': method}
      point.update({f'method_options.{k}': v for k, v in options.items()})
      point.update({'learning_rate': rate, 'seed': seed})
      grid.append(point)
  return grid
