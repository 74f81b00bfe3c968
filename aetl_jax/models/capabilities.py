"""What a model can do, declared on its class, read in one place (``models.registry``).

Every top-level model class says it with a class attribute ``CAN``::

    class Autoencoder(nn.Module):
      CAN: ClassVar[Can] = Can(reconstruct=True, init="reconstruct")

Tasks and strategies ask :func:`aetl_jax.models.registry.can` (or its shorthands
``reconstructs`` / ``classifies`` / ``init_method``) instead of probing for methods.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Can:
  """``encode`` is every model's; ``reconstruct``: a decoder (the ``reconstruct`` method);
  ``classify``: a class head over the features (``classify_features``); ``init``: the method
  whose ``init`` touches every parameter (None: ``__call__``)."""

  reconstruct: bool = False
  classify: bool = False
  init: str | None = None
