"""Adapters between formats: AdapterHub `adapters` and PEFT directories <-> our adapter checkpoints;
a run's model with its adapter merged in, as a Hugging Face folder."""

from adapters_jax.interop.convert import FORMATS, export_checkpoint, import_checkpoint
from adapters_jax.interop.merged import export_merged, write_merged
from adapters_jax.interop.naming import InteropError
from adapters_jax.interop.portable import PortableAdapter, read_checkpoint, write_checkpoint

__all__ = ['FORMATS', 'InteropError', 'PortableAdapter', 'export_checkpoint', 'export_merged',
           'import_checkpoint', 'read_checkpoint', 'write_checkpoint', 'write_merged']
