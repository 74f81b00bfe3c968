"""``python -m aetl_jax run --config FILE --workdir DIR`` (same as the ``aetl`` command)."""

import sys

from aetl_jax.cli import main

sys.exit(main())
