"""The registry of encoder families (``model.family``).

A family registers, next to its modules, a function ``(model_cfg, code_dim) ->
encoder`` with its config defaults, and in ``info``: ``decoder(model_cfg,
image_shape) -> decoder`` and ``check(model_cfg, image_shape)`` (raises
ValueError naming the dimension that does not fit).
"""

from aetl_jax.core.registry import Key, Registry, within

FAMILIES = Registry("model family", "model.family")

# The dropout key of every family that has one.
DROPOUT = Key(0.0, "dropout after each hidden layer", within(0, 1, closed="[)"))
