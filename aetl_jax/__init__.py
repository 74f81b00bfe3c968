"""aetl_jax: autoencoder pretraining and transfer learning in JAX.

Folders follow the pipeline: ``data`` (loading, splits, label budgets) →
``models`` (pure Flax linen modules) → ``objectives`` (pure loss functions) →
``training`` (jitted steps and epoch runners) → ``checkpointing`` (Orbax) →
``transfer`` (path rules, Optax masks, strategies) → ``evaluation`` →
``reporting`` (tables and figures).
"""

__version__ = "0.1.0"
