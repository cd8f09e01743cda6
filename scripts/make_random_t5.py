r"""Writes a small randomly initialised T5 with a packaged tokenizer: the model of the miniature
sequence-to-sequence config (`experiments/configs/mini_t5_rotten_tomatoes.py`) where no T5
weights can be installed.

  python scripts/make_random_t5.py --out=workdirs/random_t5

A T5 v1.0 layout (ReLU feed-forward, LM head tied to the embedding, whose logits are scaled by
d_model ** -0.5, so a random model's logits have unit scale). The tokenizer is the packaged MiniLM
word-piece tokenizer (`minilm-l6`), so the vocabulary is 30,522 tokens; pad is `[PAD]` and EOS is
`[SEP]`. The weights are random: a run on this model shows that the training and evaluation
plumbing works, not what pretrained T5 reaches.
"""

from absl import app, flags

from adapters_jax.models import resolve_checkpoint_dir
from adapters_jax.models.t5_random import write_random_t5

flags.DEFINE_string('out', None, 'Directory to write (created).')
flags.DEFINE_string('tokenizer', 'minilm-l6', 'Short name or directory whose tokenizer to copy.')
flags.DEFINE_integer('d_model', 64, 'Model width.')
flags.DEFINE_integer('num_layers', 2, 'Encoder and decoder depth.')
flags.DEFINE_integer('num_heads', 4, 'Attention heads (d_kv = d_model // num_heads).')
flags.DEFINE_integer('d_ff', 128, 'Feed-forward width.')
flags.DEFINE_integer('seed', 0, 'Initialisation seed.')
flags.mark_flags_as_required(['out'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  path = write_random_t5(
      FLAGS.out, tokenizer_dir=resolve_checkpoint_dir(FLAGS.tokenizer), seed=FLAGS.seed,
      d_model=FLAGS.d_model, d_kv=FLAGS.d_model // FLAGS.num_heads, d_ff=FLAGS.d_ff,
      num_layers=FLAGS.num_layers, num_decoder_layers=FLAGS.num_layers,
      num_heads=FLAGS.num_heads, dropout_rate=0.0, feed_forward_proj='relu',
      tie_word_embeddings=True)
  print(path)


if __name__ == '__main__':
  app.run(main)
