"""Pure objectives ``(params, batches, rng) -> (loss, aux)``, registered by name.

Importing this package registers the built-in ones; a new objective is a
function decorated with ``@OBJECTIVES.register(...)`` in any module.
"""

from aetl_jax.objectives import (adaptation, augmentation, autoencoders,  # noqa: F401
                                 classification, contractive, ladder, sequences)
from aetl_jax.objectives.registry import OBJECTIVES, make_objective  # noqa: F401
