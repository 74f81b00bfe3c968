"""What a run does: pretraining, the transfer task, the VAE-bounds task (registered by name)."""

from aetl_jax.tasks import transfer, vae_bounds  # noqa: F401
from aetl_jax.tasks.registry import TASKS  # noqa: F401
