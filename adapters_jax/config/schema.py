"""Every field a training run reads, with its default: `run_config()`; config files start from it
and set only what differs.

The library reads these as `config.x` (train/, sweeps/, predict/); no reader supplies a default of
its own. `OPEN_FIELDS` are the ConfigDicts whose keys are free (a method's options, a model field, a
split's file): `--config.method_options.size=8` adds a key there; every other field must exist.
`SMOKE` is the one shrink of a run to seconds: the `smoke` config argument (tests) and a sweep's
dry run both apply it.

Imports only ml_collections, so config files can use it.

Example:
  config = run_config()
  config.method = 'lora'
  smoke(config, num_train_steps=6)
"""

import ml_collections

OPEN_FIELDS = ('model_overrides', 'method_options', 'local_task.paths')


def run_config() -> ml_collections.ConfigDict:
  """The defaults of every field a run reads (unlocked)."""
  config = ml_collections.ConfigDict()
  # Model: a short name (`minilm-l6`), a local HF-style directory, a hub id, or a Flax NNX model's
  # constructor `nnx:MODULE:FUNCTION`, called as FUNCTION(vocab_size=, num_labels=, rngs=,
  # **model_overrides) -> nnx.Module (contract: adapters_jax/train/nnx_model.py).
  config.model = 'minilm-l6'
  config.tokenizer = 'minilm-l6'    # nnx: models only: whose tokenizer (short name, directory, hub id)
  config.dtype = 'float32'          # compute dtype: float32 or bfloat16 (params stay float32)
  config.remat = False              # rematerialise each block's activations in the backward pass
  config.scan_layers = False        # run the blocks as one nn.scan (faster compiles, deep models)
  config.model_overrides = ml_collections.ConfigDict()  # model config fields, e.g. hidden_dropout;
  # an nnx: model's constructor keyword arguments

  # Task: a GLUE name (`rte`, `glue/mnli`, ...), `rotten_tomatoes`, `tweet_sentiment`, `e2e_nlg`,
  # `lm_jsonl`, `metamathqa`, or `local` (files described by `local_task`).
  config.task = 'rotten_tomatoes'
  config.data_dir = ''              # tfds data_dir for GLUE ('' = tfds default); e2e_nlg/lm_jsonl files;
                                    # metamathqa: the hub's files ('' = download them)
  config.local_task = ml_collections.ConfigDict({
      'name': 'local',             # the task's name in results and adapter names
      'paths': ml_collections.ConfigDict(),  # split -> file, e.g. {'train': 'train.csv', ...}
      'text_columns': ('text',),   # one column, or two for sentence pairs
      'label_column': 'label',
      'label_names': (),           # class names; empty for regression
      'regression': False,         # a float label instead of classes
      'drop_bad_rows': False,      # skip (and count) bad rows instead of failing
      'encoding': 'utf-8',         # e.g. latin-1, cp1252; 'utf-8' also skips a byte-order mark
      'format': '',                # csv, tsv or jsonl; '' = from each file's extension
      'test_has_labels': True,     # False: test files need no label column
  })
  # '' = the task's own splits; 'validation_as_test' = the original validation split as test and
  # a new validation split (adapters_jax.data.resplit; Compacter's scheme).
  config.split_scheme = ''
  config.max_length = 128           # tokens per example (inputs for seq2seq)
  # Task kind: '' = from the model's family (BERT/RoBERTa: classification or regression, T5:
  # seq2seq); or one of `adapters_jax.task_kinds.choice.KINDS`.
  config.task_kind = ''
  # Causal-LM kind (decoders).
  config.lm = ml_collections.ConfigDict({
      'label_smoothing': 0.0,      # of the training loss
      'pack': False,               # several examples per row (perplexity-only tasks)
      'max_new_tokens': 64,        # generation tasks: tokens per prompt
      'num_beams': 1,              # 1 = greedy; more = beam search
      'length_penalty': 1.0,       # HF's beam-search length penalty
      'no_repeat_ngram_size': 0,   # 0 = no n-gram blocking
  })
  config.max_train_examples = -1    # > 0: a fixed subset (the same for every seed)
  config.max_eval_examples = -1     # > 0: a fixed subset of each evaluation split

  # Method: an adapter preset or a baseline (`full`, `head`).
  config.method = 'houlsby'
  config.method_options = ml_collections.ConfigDict()  # preset overrides, e.g. {'size': 8}
  config.adapter_drop_layers = ()   # AdapterDrop: layers with no adapter and nothing trained
  config.adapter_name = ''          # '' = the task's name
  config.train_head = True          # train the task head beside the adapter
  config.init_adapter_from = ''     # an adapter checkpoint of ours (e.g. a run's best/) to start from

  # Optimisation: AdamW, linear warmup then linear decay.
  config.learning_rate = 1e-3       # peak
  config.warmup_ratio = 0.1         # of the training steps
  config.weight_decay = 0.01        # AdamW's decoupled decay of the trained parameters
  config.clip_norm = 1.0            # global gradient norm; 0 = no clipping
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 3.0
  config.num_train_steps = -1       # > 0 overrides num_epochs
  config.seed = 0                   # initialisation, dropout and data order
  config.sort_window = 50           # sort by length within windows of this many batches

  # Bookkeeping.
  config.eval_every_steps = 500     # and at the end
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2       # training checkpoints kept (the best adapter is kept apart)
  config.log_every_steps = 50
  config.select_metric = ''         # '' = the task's primary metric
  config.tensorboard = True         # also write TensorBoard summaries
  config.distributed = False        # call jax.distributed.initialize() (multi-host)

  # Placement on the device mesh [data, model] (train/sharding_rules.py).
  config.sharding = 'data'          # data (params replicated), fsdp, tp or fsdp+tp
  config.model_parallelism = 1      # size of the mesh's model axis (tp, fsdp+tp); data = the rest
  config.frozen_dtype = 'float32'   # storage of the frozen base: float32 or bfloat16
  # QLoRA: '' (float kernels), 'nf4', 'int4' or 'int8': the frozen kernels stored blockwise
  # quantised (adapters_jax.quantization), dequantised inside the jitted step; their block scales
  # take `frozen_dtype`.
  config.quantize = ''
  config.quantize_block_size = 64   # values per absmax block along a kernel's last axis
  return config


# A run that finishes in seconds: the `smoke` config argument (tests) and a sweep's dry run (after
# each run's own values, on a stand-in model). Config files change single values with
# `smoke(config, num_train_steps=6)`.
SMOKE = {
    'max_train_examples': 64, 'max_eval_examples': 32, 'max_length': 32, 'batch_size': 8,
    'eval_batch_size': 16, 'num_train_steps': 2, 'eval_every_steps': 2,
    'checkpoint_every_steps': 2, 'log_every_steps': 1, 'tensorboard': False,
}


def smoke(config: ml_collections.ConfigDict, **changes) -> ml_collections.ConfigDict:
  """Shrinks `config` to a few steps on a few examples (`SMOKE`, with `changes`); returns it.

  Raises:
    ValueError: a change to a field `SMOKE` does not set.
  """
  unknown = set(changes) - set(SMOKE)
  if unknown:
    raise ValueError(f'smoke() changes {sorted(SMOKE)}, not {sorted(unknown)}; set other fields '
                     'on the config itself.')
  config.update({**SMOKE, **changes})
  return config
