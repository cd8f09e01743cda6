"""Tiny Flax decoder configs, one per family, for tests that build `DecoderLM` from scratch."""

from adapters_jax.models import DecoderConfig

TINY_DECODERS = {
    'llama': DecoderConfig(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=8, intermediate_size=48),
    'gpt2': DecoderConfig.from_hf_config(dict(model_type='gpt2', vocab_size=61, n_embd=32,
                                              n_layer=2, n_head=4, n_positions=32, n_inner=48,
                                              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
}
