"""Per-family XLA compiler options for the train step, chosen from benchmarks.

On XLA:CPU (jaxlib 0.10) convolutions are handed to YNNPACK by default. On the
2-core development CPU that made the conv autoencoder's train step 1.4× slower
per batch (585 vs 833 ex/s at batch 64; 400 vs 812 at batch 256, ``python -m
aetl_jax.bench.conv``) than XLA's own (Eigen) convolutions, while YNNPACK's
dots are the fastest for dense layers. So conv families compile their step
with YNNPACK used for dots only; everything else keeps XLA's defaults.
ResNet-18 depends on the input size (:data:`_CPU_OPTIONS`, :func:`per_batch_on_cpu`):
below 64 px it trains in a scan with matmul convolutions and XLA's defaults, from
160 px YNNPACK keeps its elementwise and reduction fusions but not convolutions, and
from 64 px copy insertion's region analysis spares a copy of every donated kernel. The
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
_DOT = ((_YNN, "LIBRARY_FUSION_TYPE_DOT"),)
# YNNPACK keeps its elementwise and reduction fusions (BatchNorm's passes) but not the
# convolutions, which XLA's Eigen kernels run faster on large maps.
_DOT_ELTWISE_REDUCE = (
    (_YNN, "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE"),)
# Per family on CPU: ((from input height, options), ...), the last whose height is reached
# applies. ResNet-18's train step (batch 32, interleaved, BENCHMARKS.md "ResNet-18"): XLA's
# defaults 118.0 against 107.4 ex/s for DOT,ELTWISE,REDUCE at 64 px, 28.0 against 27.6 at
# 128 px, 9.1 against 11.7 at 224 px; at 32 px (scan, im2col) defaults 428 against 398.
# Trained one call per batch (from 64 px), ResNet-18 also takes copy insertion's region
# analysis: without it XLA:CPU copies every donated convolution kernel once a step before Adam
# updates it in place (53 copies, 42.6 MiB a step at 64, 128 and 224 px); with it none, the
# same numbers. Interleaved A/B, batch 32: 64 px 123.2 -> 132.3 and 110.8 -> 116.1 ex/s;
# 128 and 224 px within their noise (-6% to +6%, 0%).
_REGIONS = (("xla_cpu_copy_insertion_use_region_analysis", True),)
_CPU_OPTIONS = {"conv": ((0, _DOT),), "resnet": ((0, _DOT),), "lenet": ((0, _DOT),),
                "resnet18": ((0, ()), (64, _REGIONS), (160, _DOT_ELTWISE_REDUCE + _REGIONS))}
# Families whose convolutions run XLA's kernels on CPU: one call per batch (engine.runtime).
CONV_FAMILIES = tuple(_CPU_OPTIONS)
# ...from this input size (height) on; below it the whole epoch is one scan and the model's
# convolutions are patches @ kernel (ResNet-18, epochs of 512 images at batch 64: 32 px
# scan + im2col 414 ex/s, per batch + the table 371; 64 px 129 against 133; 224 px at
# batch 32, 8.7 against 12.2; BENCHMARKS.md).
PER_BATCH_FROM = {"resnet18": 64}


def _height(input_shape) -> float:
  """An example's height; unknown (None, or not an image): as large as any."""
  return input_shape[0] if input_shape is not None and len(input_shape) >= 2 else float("inf")


def per_batch_on_cpu(family: str | None, input_shape=None) -> bool:
  """Whether ``family`` trains one call per batch on CPU for inputs of ``input_shape``
  ((height, width, channels); None: unknown, the family's rule for large inputs)."""
  return family in CONV_FAMILIES and _height(input_shape) >= PER_BATCH_FROM.get(family, 0)


@functools.lru_cache(maxsize=None)
def _supported(options: tuple) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros(())).compile()
    return True
  except Exception as err:  # noqa: BLE001 - any refusal means "not supported here"
    log.info("XLA compiler options %s not supported here (%s); using XLA's defaults",
             dict(options), first_line(err))
    return False


def train_compiler_options(family: str | None, backend: str | None = None,
                           input_shape=None) -> dict:
  """The ``compiler_options`` for a train step of this model family on ``backend``, for
  examples of ``input_shape`` (None: unknown, the options for large inputs)."""
  backend = backend or jax.default_backend()
  if backend != "cpu" or family not in _CPU_OPTIONS:
    return {}
  options = [o for height, o in _CPU_OPTIONS[family] if _height(input_shape) >= height][-1]
  return dict(options) if options and _supported(options) else {}
