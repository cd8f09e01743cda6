"""adapters_jax: parameter-efficient fine-tuning with adapters spliced into frozen Flax transformers.

    from adapters_jax import add_adapter, get_method, trainable
    spliced, params = add_adapter(model, params, 'sst2', get_method('houlsby'), rng, input_ids)
    logits = spliced.apply(params, input_ids, active='sst2')
"""

from adapters_jax import methods, sites, trainable
from adapters_jax.checkpoint import (
    CheckpointError,
    base_fingerprint,
    load_record,
    restore_adapter,
    save_adapter,
)
from adapters_jax.methods import PRESETS, get_method, method_from_dict
from adapters_jax.sites import SiteMatchError, SiteRule
from adapters_jax.splice import (
    AdapterSpec,
    Spliced,
    adapter_leaves,
    add_adapter,
    merge_adapter,
    remove_adapter,
    unmerge_adapter,
)
from adapters_jax.version import __version__

__all__ = [
    'AdapterSpec', 'CheckpointError', 'PRESETS', 'SiteMatchError', 'SiteRule', 'Spliced',
    '__version__', 'adapter_leaves', 'add_adapter', 'base_fingerprint', 'get_method',
    'load_record', 'merge_adapter', 'method_from_dict', 'methods', 'remove_adapter',
    'restore_adapter', 'save_adapter', 'sites', 'trainable', 'unmerge_adapter',
]
