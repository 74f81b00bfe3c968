"""Pure Flax (linen) modules. Parameters are plain pytrees:

    autoencoder params = {'encoder': {...}, 'decoder': {...}}
    classifier  params = {'encoder': {...}, 'head': {...}}

The ``encoder`` subtree has the same structure in both, which is what makes
the Orbax transplant a subtree copy. Encoder layers are named ``block_<i>``
(input to output) so path rules can address "the first k blocks".
"""

from aetl_jax.models.autoencoder import Autoencoder, Classifier, encode  # noqa: F401
from aetl_jax.models.family import FAMILIES  # noqa: F401
from aetl_jax.models.registry import build_autoencoder, build_classifier  # noqa: F401
