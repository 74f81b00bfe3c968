"""Benchmark scripts: ``python -m aetl_jax.bench.<name>``. They print numbers; no test times them."""
