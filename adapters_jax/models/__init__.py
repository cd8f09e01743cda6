"""Backbones in Flax Linen (BERT/RoBERTa encoders, T5, GPT-2 and Llama-family decoders), task heads,
Hugging Face checkpoint import and cached generation."""

from adapters_jax.models.bert import (
    BertEncoderModel,
    BertForSequenceClassification,
    Embeddings,
    Encoder,
    EncoderLayer,
    EncoderOutput,
    FeedForward,
    Pooler,
    SelfAttention,
    classification_model,
    position_ids_for,
)
from adapters_jax.models.bert_import import HF_TO_OURS, build_model, hf_name_to_ours, merge_hf_tensors
from adapters_jax.models.decoder import DecoderLM
from adapters_jax.models.decoder_config import DecoderConfig
from adapters_jax.models.decoder_import import load_decoder
from adapters_jax.models.encoder_config import EncoderConfig
from adapters_jax.models.generation import GenerationConfig, GenerationOutput, generate
from adapters_jax.models.heads import BertClassificationHead, RobertaClassificationHead
from adapters_jax.models.hf_convert import CheckpointMismatchError, LoadReport, convert_hf_tensors
from adapters_jax.models.hf_files import BaseModelIdentity, Pretrained, base_model_identity, read_safetensors
from adapters_jax.models.kv_cache import KVCache
from adapters_jax.models.pretrained import MODEL_TYPES, load_pretrained
from adapters_jax.models.registry import SHORT_NAMES, resolve_checkpoint_dir
from adapters_jax.models.t5 import (
    T5ForConditionalGeneration,
    init_decode_cache,
    shift_right,
)
from adapters_jax.models.t5_config import T5Config
from adapters_jax.models.t5_decoding import greedy_generate, make_greedy_generate, plain_apply
from adapters_jax.models.t5_import import T5_TO_OURS, load_t5_pretrained, merge_t5_tensors

__all__ = [
    'HF_TO_OURS', 'SHORT_NAMES', 'BaseModelIdentity', 'BertClassificationHead',
    'BertEncoderModel', 'BertForSequenceClassification', 'CheckpointMismatchError', 'Embeddings',
    'Encoder', 'EncoderConfig', 'EncoderLayer', 'EncoderOutput', 'FeedForward', 'LoadReport',
    'Pooler', 'Pretrained', 'RobertaClassificationHead', 'SelfAttention', 'base_model_identity',
    'build_model', 'classification_model', 'convert_hf_tensors', 'hf_name_to_ours',
    'load_pretrained', 'merge_hf_tensors', 'position_ids_for', 'read_safetensors',
    'resolve_checkpoint_dir',
    # T5
    'MODEL_TYPES', 'T5_TO_OURS', 'T5Config', 'T5ForConditionalGeneration', 'greedy_generate',
    'init_decode_cache', 'load_t5_pretrained', 'make_greedy_generate', 'merge_t5_tensors',
    'plain_apply', 'shift_right',
    # decoders
    'DecoderConfig', 'DecoderLM', 'GenerationConfig', 'GenerationOutput', 'KVCache', 'generate',
    'load_decoder',
]
