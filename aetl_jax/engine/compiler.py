"""Per-family XLA compiler options for the train step, chosen from benchmarks.

On XLA:CPU (jaxlib 0.10) convolutions are handed to YNNPACK by default. On the
2-core development CPU that made the conv autoencoder's train step 1.4× slower
per batch (585 vs 833 ex/s at batch 64; 400 vs 812 at batch 256, ``python -m
aetl_jax.bench.conv``) than XLA's own (Eigen) convolutions, while YNNPACK's
dots are the fastest for dense layers. So conv families compile their step
with YNNPACK used for dots only; everything else keeps XLA's defaults. The
options go through ``jax.jit(..., compiler_options=...)``, so they apply to the
train step alone and never to the user's other programs. Options the installed
XLA does not know are dropped (checked once by compiling a tiny function).
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp

from aetl_jax.core.errors import first_line

log = logging.getLogger(__name__)

_YNN = "xla_cpu_experimental_ynn_fusion_type"
_CPU_CONV_OPTIONS = ((_YNN, "LIBRARY_FUSION_TYPE_DOT"),)
# ResNet-18 (BatchNorm after every convolution): YNNPACK keeps its elementwise and reduction
# fusions, which run the BatchNorm passes faster than XLA's loops (train step at 224 px:
# 9.1 → 11.7 ex/s with XLA's convolutions; BENCHMARKS.md, "ResNet-18").
_CPU_BATCHNORM_CONV_OPTIONS = (
    (_YNN, "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"),)
_CPU_OPTIONS = {"conv": _CPU_CONV_OPTIONS, "resnet": _CPU_CONV_OPTIONS,
                "lenet": _CPU_CONV_OPTIONS, "resnet18": _CPU_BATCHNORM_CONV_OPTIONS}
# Families whose convolutions run XLA's kernels on CPU: one call per batch (engine.runtime).
CONV_FAMILIES = tuple(_CPU_OPTIONS)


@functools.lru_cache(maxsize=None)
def _supported(options: tuple) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
    return True
  except Exception as err:  # noqa: BLE001 - any refusal means "not supported here"
    log.info("XLA compiler options %s not supported here (%s); using XLA's defaults",
             dict(options), first_line(err))
    return False


def train_compiler_options(family: str | None, backend: str | None = None) -> dict:
  """The ``compiler_options`` for a train step of this model family on ``backend``."""
  backend = backend or jax.default_backend()
  options = _CPU_OPTIONS.get(family) if backend == "cpu" else None
  return dict(options) if options and _supported(options) else {}
