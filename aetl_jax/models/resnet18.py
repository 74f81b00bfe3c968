"""ResNet-18 in torchvision's layout (family ``resnet18``), with torch's BatchNorm.

Parameter paths follow torchvision's ``state_dict`` keys (``conv1``, ``bn1``,
``layer1/0/conv1`` … ``layer4/1/bn2``, ``layer2/0/downsample/0``, ``fc``), so
:mod:`aetl_jax.models.torchvision` converts a torchvision model key by key and
path rules name the blocks as torchvision does (``encoder/layer3/.*``).

As an encoder the trunk ends at the global average pool (512 features; with
``code_dim`` > 0 a dense ``code`` layer follows); the classifier's head plays
torchvision's ``fc``. Grey images are repeated to 3 channels and, with
``input_norm='imagenet'``, standardised with ImageNet's channel statistics
inside the model, so data stays in [0, 1] (reconstruction targets too).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from aetl_jax.engine.compiler import per_batch_on_cpu
from aetl_jax.models.conv import ConvDecoder, UPSAMPLING, check_downsampling
from aetl_jax.models import onednn
from aetl_jax.models.conv_ops import check_conv_impl, patches_conv
from aetl_jax.models.family import FAMILIES
from aetl_jax.models.kernels import batch_norm, max_pool
from aetl_jax.core.registry import Key, count, each, one_of, positive

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMS = ("imagenet", "none")
STAGES = ("layer1", "layer2", "layer3", "layer4")
WIDTHS = (64, 128, 256, 512)
# Encoder children input to output: what block-wise strategies (partial, gradual) count.
BLOCKS = ("conv1", "bn1", *STAGES, "code")

# torchvision's init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
_kaiming = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# 'im2col': patches @ kernel; on XLA:CPU up to 40× faster than its convolution on ResNet-18's
# small late maps, 1.5-2.5× slower on the wide early ones (BENCHMARKS.md, "ResNet-18").
# 'onednn': oneDNN's convolutions (XLA custom calls, models/onednn.py) wherever the measured
# table says they train the layer's shape fastest; 'auto' on CPU is 'onednn' where they build.
CONV_IMPLS = ("auto", "xla", "im2col", "onednn")


def resolve_impl(impl: str, x_shape=None, kernel_shape=None, stride: int = 1) -> str:
  """'auto': XLA's convolution on GPU/TPU; on CPU, per layer, whichever of XLA's
  convolution, im2col and (where its handlers build, :func:`onednn.usable`) oneDNN's
  convolution trained the layer's shape fastest in the measured table
  (:mod:`aetl_jax.models.conv_table`), im2col where no measured shape is near. (Below
  64-px inputs the network resolves 'auto' to im2col first: those train in a scan.)
  'onednn': the same with oneDNN required (the config check refuses it where it does not
  build); a table without oneDNN's column gives it the layers XLA's convolution wins."""
  if impl not in ("auto", "onednn"):
    return impl
  backend = jax.default_backend()
  if backend != "cpu":
    return "xla"
  if x_shape is None:
    return "im2col"
  with_onednn = impl == "onednn" or onednn.usable()
  from aetl_jax.models.conv_table import measured_choice
  kh, _, cin, cout = kernel_shape
  shape = dict(backend=backend, batch=x_shape[0], out=-(-x_shape[1] // stride), cin=cin,
               cout=cout, kernel=kh, stride=stride)
  choice = with_onednn and measured_choice(("xla", "patches", "onednn"), **shape)
  if not choice:
    choice = measured_choice(("xla", "patches"), **shape)
    choice = "onednn" if with_onednn and choice == "xla" else choice
  return {"patches": "im2col", None: "im2col"}.get(choice, choice)


class Conv(nn.Module):
  """A bias-free convolution with torch's symmetric zero padding; parameter ``kernel``
  (h, w, in, out) as ``nn.Conv``'s."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: int = 0
  impl: str = "xla"

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", _kaiming, (*self.kernel_size, x.shape[-1], self.features))
    p = self.padding
    impl = resolve_impl(self.impl, x.shape, kernel.shape, self.strides[0])
    if impl == "im2col":
      if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      return patches_conv(x, kernel, self.strides, "VALID")
    if impl == "onednn":
      return onednn.conv(x, kernel, tuple(self.strides), ((p, p), (p, p)))
    return lax.conv_general_dilated(x, kernel, self.strides, ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d``: batch statistics in training, running averages updated with
  ``momentum`` and the *unbiased* batch variance; running statistics in inference, and in
  training too when given frozen (collection ``frozen_stats``, see
  :mod:`aetl_jax.core.statistics`)."""

  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    frozen = self.has_variable("frozen_stats", "running_mean")
    col = "frozen_stats" if frozen else "batch_stats"
    ra_mean = self.variable(col, "running_mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable(col, "running_var", lambda: jnp.ones((c,), jnp.float32))
    if train and not frozen and not self.is_initializing():
      y, mean, var = batch_norm(x, scale, bias, self.epsilon)
      if self.is_mutable_collection("batch_stats"):
        n = x.size // c
        m = self.momentum
        ra_mean.value = (1 - m) * ra_mean.value + m * mean
        ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
      return y
    mean, var = ra_mean.value, ra_var.value
    return (x - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias


class BasicBlock(nn.Module):
  planes: int
  stride: int = 1
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    s = (self.stride, self.stride)
    y = Conv(self.planes, (3, 3), s, padding=1, impl=self.impl, name="conv1")(x)
    y = nn.relu(BatchNorm(name="bn1")(y, train=train))
    y = Conv(self.planes, (3, 3), padding=1, impl=self.impl, name="conv2")(y)
    y = BatchNorm(name="bn2")(y, train=train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = Downsample(self.planes, self.stride, self.impl, name="downsample")(x, train=train)
    return nn.relu(x + y)


class Downsample(nn.Module):
  """torchvision's ``downsample``: ``0`` a strided 1×1 conv, ``1`` its BatchNorm."""

  planes: int
  stride: int
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = Conv(self.planes, (1, 1), (self.stride, self.stride), impl=self.impl, name="0")(x)
    return BatchNorm(name="1")(x, train=train)


class Stage(nn.Module):
  planes: int
  stride: int
  blocks: int = 2
  impl: str = "xla"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for j in range(self.blocks):
      x = BasicBlock(self.planes, self.stride if j == 0 else 1, self.impl, name=str(j))(
          x, train=train)
    return x


class ResNet18(nn.Module):
  """torchvision's ``resnet18``: 7×7/2 stem, 3×3/2 max-pool, four stages of two basic
  blocks, global average pool; then ``code`` (``code_dim`` > 0) and/or ``fc``
  (``num_classes`` > 0, the full torchvision classifier)."""

  code_dim: int = 0
  num_classes: int = 0
  input_norm: str = "imagenet"
  conv_impl: str = "auto"
  batch_norm: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    impl = self.conv_impl
    if impl == "auto" and jax.default_backend() == "cpu" and \
        not per_batch_on_cpu("resnet18", x.shape[1:]):
      impl = "im2col"  # small inputs train in a scan (engine.runtime), where XLA's conv is slow
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    if self.input_norm == "imagenet":
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    x = Conv(64, (7, 7), (2, 2), padding=3, impl=impl, name="conv1")(x)
    x = nn.relu(BatchNorm(name="bn1")(x, train=train))
    x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))  # nn.max_pool's values and gradient
    for i, (name, planes) in enumerate(zip(STAGES, WIDTHS)):
      x = Stage(planes, 1 if i == 0 else 2, impl=impl, name=name)(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    if self.code_dim:
      x = nn.Dense(self.code_dim, name="code")(x)
    if self.num_classes:
      x = nn.Dense(self.num_classes, name="fc")(x)
    return x


def _decoder(m, image_shape):
  # The matmul formulations, measured when the family trained inside a scan (XLA:CPU's
  # convolutions are ~20× slower there, jax#12868); the family now trains one call per
  # batch on CPU, where the decoder's formulations were not measured again.
  cpu = jax.default_backend() == "cpu"
  impl = {"xla": "xla"}.get(m.conv_impl, "matmul" if cpu else "xla")
  return ConvDecoder(image_shape=tuple(image_shape), channels=tuple(m.decoder_channels),
                     upsampling=m.upsampling, conv_impl=impl)


def _check(m, image_shape) -> None:
  if image_shape[-1] not in (1, 3):
    raise ValueError(f"family 'resnet18' reads grey (1) or RGB (3) images, got "
                     f"{image_shape[-1]} channels")
  check_downsampling(image_shape, len(m.decoder_channels), "resnet18 decoder")


def _validate(m) -> None:
  from aetl_jax.models.torchvision import check_weights
  check_weights(m.weights)
  check_conv_impl(m)


_DEFAULTS = dict(
    code_dim=Key(0, "size of the code (0: the trunk's own features)",
                 count(0, " (0: the 512 pooled features)")),
    input_norm=Key("imagenet", "standardise inputs inside the model: imagenet or none",
                   one_of(*INPUT_NORMS)),
    weights=Key("", "start from torchvision:NAME or checkpoint:DIR ('' : random)"),
    decoder_channels=Key((256, 128, 64, 32), "channels of the decoder's upsampling blocks",
                         each(positive(integer=True), "positive integers")),
    upsampling=Key("transpose", "the decoder's upsampling: transpose, resize or subpixel",
                   one_of(*UPSAMPLING)),
    conv_impl=Key("auto", f"convolution formulation: {', '.join(CONV_IMPLS)}",
                  one_of(*CONV_IMPLS)))


@FAMILIES.register("resnet18", defaults=_DEFAULTS, validate=_validate, decoder=_decoder,
                   check=_check, blocks=BLOCKS, batch_norm=True, zero_code_dim=True)
def resnet18(m, code_dim: int):
  """torchvision's ResNet-18 trunk (BatchNorm) → 512 pooled features (→ ``code``);
  ``model.weights`` starts it from torchvision's or another run's weights."""
  return ResNet18(code_dim=code_dim, input_norm=m.input_norm, conv_impl=m.conv_impl)
