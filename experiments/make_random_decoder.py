r"""Writes a small randomly initialised Llama checkpoint (config.json, safetensors, tokenizer).

  python -m experiments.make_random_decoder --out_dir=workdirs/tiny_llama

The stand-in decoder of `experiments/configs/mini_lora_lm.py` and of tests: pretrained decoder
weights cannot be installed offline, so this writes a Llama-shaped model (hidden 64, 2 layers,
4 heads with 2 key/value heads, FFN 128, 512 positions) with weights drawn from `--seed` with
standard deviation 1/sqrt(hidden) = 0.125: each projection keeps the scale of its input, and the
untied LM head can give logits far from uniform (GPT-2's 0.02 would leave a random 64-wide head
with logits within about +-0.6 of each other, so perplexity could hardly fall). The tokenizer is
the packaged MiniLM one (uncased WordPiece, 30,522 tokens; [SEP] ends a completion).
`experiments.train --config.model=<out_dir>` then loads it like any checkpoint.
"""

from absl import app, flags

from experiments import entry_point

flags.DEFINE_string('out_dir', None, 'Directory to write the checkpoint to.')
flags.DEFINE_integer('seed', 0, 'Seed of the random weights.')
flags.mark_flags_as_required(['out_dir'])
FLAGS = flags.FLAGS

# A config.json of transformers' LlamaConfig; ids are the MiniLM tokenizer's [CLS], [SEP], [PAD].
TINY_LLAMA = dict(model_type='llama', vocab_size=30522, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, bos_token_id=101, eos_token_id=102,
                  pad_token_id=0, tie_word_embeddings=False, initializer_range=0.125)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from adapters_jax.models import resolve_checkpoint_dir
  from adapters_jax.models.decoder_export import random_decoder_checkpoint

  print(random_decoder_checkpoint(FLAGS.out_dir, TINY_LLAMA, seed=FLAGS.seed,
                                  tokenizer_dir=resolve_checkpoint_dir('minilm-l6')))


if __name__ == '__main__':
  entry_point.run(main)
