"""What a run does, registered by name: transfer, vae_bounds, one_class, clustering."""

from aetl_jax.tasks import clustering, one_class, transfer, vae_bounds  # noqa: F401
from aetl_jax.tasks.registry import TASKS  # noqa: F401
