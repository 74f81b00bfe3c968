"""Experiment modules a user launches: ``python -m experiments NAME --workdir DIR``.

Each module defines ``get_config()`` (an ml_collections ConfigDict) and
``run(config, workdir, progress)``; its docstring says how to run it and what
it gave.
"""

EXPERIMENTS = {
    "digits_transfer": "experiments.digits_transfer",
    "transfer": "experiments.transfer",
    "mnist_vae": "experiments.mnist_vae",
}
DEFAULT_EXPERIMENT = "digits_transfer"
