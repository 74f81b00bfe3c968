"""Orbax checkpoints: atomic saves, resume, and partial (encoder-only) restores."""

from aetl_jax.checkpointing.orbax_io import (  # noqa: F401
    CheckpointError, abstract_like, finished_steps, make_manager, read_sidecar,
    restore_latest, restore_subtree, save, write_sidecar)
