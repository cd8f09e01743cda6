"""adapters_jax: parameter-efficient fine-tuning with adapters spliced into frozen Flax transformers.

    from adapters_jax import add_adapter, get_method, trainable
    spliced, params = add_adapter(model, params, 'sst2', get_method('houlsby'), rng, input_ids)
    logits = spliced.apply(params, input_ids, active='sst2')
"""

from adapters_jax import methods
from adapters_jax.checkpoint.fusion_checkpoint import restore_fusion, save_fusion
from adapters_jax.checkpoint.restore import RestoredAdapter, restore_adapter, restore_adapters
from adapters_jax.checkpoint.save import CheckpointError, base_fingerprint, load_record, save_adapter
from adapters_jax.methods import PRESETS, get_method, method_from_dict
from adapters_jax.splicing import sites, trainable
from adapters_jax.splicing.averaging import average_adapter
from adapters_jax.splicing.composition import (
    Average,
    CompositionError,
    Fuse,
    Parallel,
    PerExample,
    Stack,
    choice_index,
)
from adapters_jax.splicing.eject import eject_adapter
from adapters_jax.splicing.fusion_layers import add_fusion, fusion_attentions
from adapters_jax.splicing.merge import merge_adapter, unmerge_adapter
from adapters_jax.splicing.sites import SiteMatchError, SiteRule
from adapters_jax.splicing.splice import Spliced, add_adapter, remove_adapter
from adapters_jax.splicing.tree import AdapterSpec, adapter_leaves
from adapters_jax.train import optimizer
from adapters_jax.version import __version__

__all__ = [
    'AdapterSpec', 'Average', 'CheckpointError', 'CompositionError', 'Fuse',
    'PRESETS', 'Parallel', 'PerExample', 'RestoredAdapter', 'SiteMatchError', 'SiteRule', 'Spliced', 'Stack',
    '__version__', 'adapter_leaves', 'add_adapter', 'add_fusion', 'average_adapter',
    'base_fingerprint', 'choice_index', 'eject_adapter', 'fusion_attentions', 'get_method', 'load_record',
    'merge_adapter', 'method_from_dict', 'methods', 'optimizer', 'remove_adapter', 'restore_adapter',
    'restore_adapters', 'restore_fusion', 'save_adapter', 'save_fusion', 'sites', 'trainable',
    'unmerge_adapter',
]
