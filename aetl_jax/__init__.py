"""aetl_jax: autoencoder pretraining and transfer learning in JAX.

Layers, bottom to top (each imports only from the ones below it; checked by
import-linter, see BUILD.md): ``core`` (config, registries, path rules,
Optax pieces) → ``engine`` (train step, launchers, epoch runners, phases, the
one driver, checkpoints) and ``data`` → ``models`` → ``objectives`` →
``evaluation``, ``reporting`` → ``strategies`` → ``transfer`` (the sweep) →
``tasks`` → ``api`` / ``cli``.

    import aetl_jax.api as api
    api.run(api.load_config("experiments/digits_transfer.py"), "runs/digits")
"""

__version__ = "0.6.0"  # the one version number: pyproject.toml reads it
