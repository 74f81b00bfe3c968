"""Bottom layer: config overrides, open registries, path rules, Optax pieces."""
