"""Transfer strategies, registered by name (``transfer.strategies``).

Importing this package registers the built-in ones; a new strategy is a
function decorated with ``@STRATEGIES.register(...)`` in any module.
"""

from aetl_jax.strategies import (adaptation, backbone, base, bitfit, custom,  # noqa: F401
                                 manifold, probes, semi)
from aetl_jax.strategies.probes import PROBES  # noqa: F401
from aetl_jax.strategies.registry import (EVERYTHING, HEAD_ONLY, STRATEGIES, Strategy,  # noqa: F401
                                          StrategyContext, build_strategy)
