"""``python -m aetl_jax run --config FILE --workdir DIR`` (same as the ``aetl`` command)."""

from aetl_jax.cli import entry

entry()
