"""Every field a training run reads, with its default. Other configs start from `base_config()`.

`OPEN_FIELDS` are the ConfigDicts whose keys are free (a method's options, a model field, a split's
file): `--config.method_options.size=8` adds a key there; every other field must exist.
"""

import ml_collections

from adapters_jax.config import overrides as config_args

OPEN_FIELDS = ('model_overrides', 'method_options', 'local_task.paths')


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Model: a short name (`minilm-l6`), a local HF-style directory, or a hub id.
  config.model = 'minilm-l6'
  config.dtype = 'float32'          # compute dtype: float32 or bfloat16 (params stay float32)
  config.remat = False
  config.scan_layers = False
  config.model_overrides = ml_collections.ConfigDict()  # EncoderConfig fields, e.g. hidden_dropout

  # Task: a GLUE name (`rte`, `glue/mnli`, ...), `rotten_tomatoes`, `tweet_sentiment`, or `local`.
  config.task = 'rotten_tomatoes'
  config.data_dir = ''              # tfds data_dir for GLUE ('' = tfds default); e2e_nlg/lm_jsonl files
  config.local_task = ml_collections.ConfigDict({
      'name': 'local',
      'paths': ml_collections.ConfigDict(),  # split -> file, e.g. {'train': 'train.csv', ...}
      'text_columns': ('text',),
      'label_column': 'label',
      'label_names': (),           # class names; empty for regression
      'regression': False,
      'drop_bad_rows': False,
      'encoding': 'utf-8',         # e.g. latin-1, cp1252; 'utf-8' also skips a byte-order mark
      'format': '',                # csv, tsv or jsonl; '' = from each file's extension
      'test_has_labels': True,     # False: test files need no label column
  })
  # '' = the task's own splits; 'validation_as_test' = the original validation split as test and
  # a new validation split (adapters_jax.data.resplit; Compacter's scheme).
  config.split_scheme = ''
  config.max_length = 128
  # Task kind: '' = from the model's family (BERT/RoBERTa: classification or regression, T5:
  # seq2seq); or one of `adapters_jax.task_kinds.choice.KINDS`.
  config.task_kind = ''
  # Causal-LM kind (decoders): label smoothing of the training loss; several examples per row
  # (perplexity-only tasks); generation tasks: tokens per prompt, greedy (num_beams 1) or beam
  # search with HF's length penalty and no-repeat n-gram size.
  config.lm = ml_collections.ConfigDict({'label_smoothing': 0.0, 'pack': False,
                                         'max_new_tokens': 64, 'num_beams': 1,
                                         'length_penalty': 1.0, 'no_repeat_ngram_size': 0})
  config.max_train_examples = -1    # > 0: a fixed subset (the same for every seed)
  config.max_eval_examples = -1

  # Method: an adapter preset or a baseline (`full`, `head`).
  config.method = 'houlsby'
  config.method_options = ml_collections.ConfigDict()  # preset overrides, e.g. {'size': 8}
  config.adapter_drop_layers = ()   # AdapterDrop: layers with no adapter and nothing trained
  config.adapter_name = ''          # '' = the task's name
  config.train_head = True
  config.init_adapter_from = ''     # an adapter checkpoint of ours (e.g. a run's best/) to start from

  # Optimisation.
  config.learning_rate = 1e-3
  config.warmup_ratio = 0.1
  config.weight_decay = 0.01
  config.clip_norm = 1.0
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 3.0
  config.num_train_steps = -1       # > 0 overrides num_epochs
  config.seed = 0
  config.sort_window = 50           # sort by length within windows of this many batches

  # Bookkeeping.
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.log_every_steps = 50
  config.select_metric = ''         # '' = the task's primary metric
  config.tensorboard = True
  config.distributed = False        # call jax.distributed.initialize() (multi-host)

  # Placement on the device mesh [data, model] (train/partitioning.py).
  config.sharding = 'data'          # data (params replicated), fsdp, tp or fsdp+tp
  config.model_parallelism = 1      # size of the mesh's model axis (tp, fsdp+tp); data = the rest
  config.frozen_dtype = 'float32'   # storage of the frozen base: float32 or bfloat16
  return config


# A run that finishes in seconds: tests and `:smoke` arguments. Configs change single values with
# `smoke(config, num_train_steps=6)`.
SMOKE = {
    'max_train_examples': 64, 'max_eval_examples': 32, 'max_length': 32, 'batch_size': 8,
    'eval_batch_size': 16, 'num_train_steps': 2, 'eval_every_steps': 2,
    'checkpoint_every_steps': 2, 'log_every_steps': 1, 'tensorboard': False,
}


# What `experiments.sweep --dry_run` sets on every run after its own values: one step on a few
# examples of a small stand-in model (`--dry_run_model`, default below).
DRY_RUN = {
    'model': 'minilm-l6', 'max_train_examples': 8,
    'max_eval_examples': 4, 'max_length': 16, 'batch_size': 4, 'eval_batch_size': 4,
    'num_train_steps': 1, 'eval_every_steps': 1, 'checkpoint_every_steps': 1, 'log_every_steps': 1,
    'keep_checkpoints': 1, 'tensorboard': False,
}


def smoke(config: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
  """Shrinks `config` to a few steps on a few examples (`SMOKE`, with `changes`)."""
  unknown = set(changes) - set(SMOKE)
  if unknown:
    raise ValueError(f'smoke() changes {sorted(SMOKE)}, not {sorted(unknown)}.')
  config.update({**SMOKE, **changes})
  return config


def split_arg(arg: str, names: tuple[str, ...] = ('smoke',)) -> tuple[set[str], dict]:
  """A config argument `smoke,task=mrpc` as (names, key=value items); apply the items last with
  `config_args.apply_overrides(config, items, OPEN_FIELDS)`.

  Raises:
    ValueError: a name not in `names`.
  """
  args = config_args.parse_arg(arg)
  flags = {k for k, v in args.items() if v is True and '.' not in k}
  unknown = flags - set(names)
  if unknown:
    raise ValueError(f'Unknown config argument(s) {sorted(unknown)}; valid: '
                     f'{", ".join(repr(n) for n in ("", *names))}, plus key=value items.')
  return flags, {k: v for k, v in args.items() if k not in flags}
