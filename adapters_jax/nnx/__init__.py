"""Adapters spliced into Flax NNX models: `splice` (add, remove, choose what runs), `adapted_site`
(the site module and `AdapterParam`), `fusion` (AdapterFusion layers), `merge` (LoRA / (IA)3 into
the base weights), `trainable` (the filter of what trains), `checkpoint` (adapter-only Orbax
files), `linen_bridge` (adapters across a Linen model and its NNX twin), `export` (to PEFT /
AdapterHub through such a twin's paths), `sharding` (adapter leaves of a sharded model)."""
