"""Adapters between formats: AdapterHub `adapters` and PEFT directories <-> our adapter checkpoints."""

from adapters_jax.interop.convert import FORMATS, export_checkpoint, import_checkpoint
from adapters_jax.interop.naming import InteropError
from adapters_jax.interop.portable import PortableAdapter, read_checkpoint, write_checkpoint

__all__ = ['FORMATS', 'InteropError', 'PortableAdapter', 'export_checkpoint', 'import_checkpoint',
           'read_checkpoint', 'write_checkpoint']
