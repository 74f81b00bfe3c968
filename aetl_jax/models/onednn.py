"""oneDNN's convolutions as XLA custom calls on CPU (``conv_impl='onednn'``, and 'auto''s
choice on CPU wherever they build).

jaxlib's CPU build runs XLA's own (Eigen) convolutions; PyTorch runs oneDNN's, which
train the conv autoencoder's wide layers 1.2-2.5× faster on the 2-core AVX-512 machine
(``python -m aetl_jax.bench.onednn_library``, BENCHMARKS.md). This module compiles
``onednn_conv.cpp`` (three XLA FFI handlers: forward, input gradient, kernel gradient)
the first time it is needed, registers the handlers with ``jax.ffi`` and gives :func:`conv`,
a drop-in for :func:`conv_ops.xla_conv` whose gradients are oneDNN's too, and
:func:`conv_transpose`, the same three handlers as ``lax.conv_transpose``. Needs a C++
compiler and oneDNN's headers and library: the Python environment's oneDNN 3 (PyPI's
``onednn-devel-cpu-gomp``, CPU-only with GNU OpenMP, a dependency of this package on x86-64
Linux) or else the system's oneDNN 2 or 3 (Debian/Ubuntu: ``apt-get install libdnnl-dev``);
without them :func:`problem` says why in one line (``conv_impl='onednn'`` is refused when the
config is read, before anything trains; 'auto' keeps XLA's convolutions). The shared library
is cached under ``$AETL_CACHE`` (default ``~/.cache/aetl_jax``), keyed by the source, the
jaxlib version and the oneDNN it was built against, and written atomically.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("onednn_conv.cpp")
INSTALL = "pip install onednn-devel-cpu-gomp or apt-get install libdnnl-dev"
_HANDLERS = ("Forward", "InputGrad", "KernelGrad")


def cache_dir() -> Path:
  return Path(os.environ.get("AETL_CACHE") or Path.home() / ".cache" / "aetl_jax")


def environment_onednn() -> Path | None:
  """The Python environment's oneDNN (PyPI's ``onednn-devel-cpu-gomp``, a dependency of this
  package on x86-64 Linux: headers under ``include/``, ``libdnnl.so`` under ``lib/`` of the
  environment's data folder), or None; then the handlers build against the system's."""
  for scheme in (sysconfig.get_default_scheme(), f"{os.name}_user"):  # pip install [--user]
    root = Path(sysconfig.get_paths(scheme)["data"])
    if ((root / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists()
        and (root / "lib" / "libdnnl.so").exists()):
      return root
  return None


def _build_flags() -> list[str]:
  """The compiler's flags for the environment's oneDNN (its library found again at run
  time through the rpath), or none for the system's."""
  root = environment_onednn()
  if root is None:
    return []
  return [f"-I{root / 'include'}", f"-L{root / 'lib'}", f"-Wl,-rpath,{root / 'lib'}"]


def _library_path() -> Path:
  """The build's cached file, named by the source, jaxlib's version and the oneDNN built
  against (its location and version header)."""
  import jaxlib
  root = environment_onednn()
  version = (root / "include" / "oneapi" / "dnnl" / "dnnl_version.h") if root else None
  key = (SOURCE.read_bytes() + jaxlib.__version__.encode() + str(root).encode()
         + (version.read_bytes() if version else b""))
  return cache_dir() / f"onednn_conv-{hashlib.sha1(key).hexdigest()[:16]}.so"


class Unavailable(RuntimeError):
  """This machine cannot build or load the handlers; the message says why, in one line."""


def _compile(target: Path) -> None:
  """Compile the handlers into ``target``, atomically."""
  compiler = shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise Unavailable(f"conv_impl='onednn' needs a C++ compiler (apt-get install g++) and "
                      f"oneDNN ({INSTALL})")
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    raise Unavailable(f"conv_impl='onednn' cannot write its build to {target.parent} ({err}); "
                      f"set AETL_CACHE to a writable folder") from err
  with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
    built = Path(tmp) / target.name
    done = subprocess.run(
        [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}",
         *_build_flags(), str(SOURCE), "-o", str(built), "-ldnnl"], capture_output=True,
        text=True)
    if done.returncode:
      first = next((line for line in done.stderr.splitlines() if "error" in line),
                   done.stderr.strip()[:200])
      raise Unavailable(f"conv_impl='onednn' could not build against oneDNN ({INSTALL}): "
                        f"{first}")
    os.replace(built, target)


@functools.lru_cache(maxsize=None)
def require() -> str:
  """Build (once per source and jaxlib version) and register the handlers; the library's
  path. :class:`Unavailable` when this machine cannot."""
  if jax.default_backend() != "cpu":
    raise Unavailable(f"conv_impl='onednn' runs on CPU only (backend "
                      f"{jax.default_backend()}); use 'auto' or 'xla'")
  path = _library_path()
  if not path.exists():
    _compile(path)
  return _register(path)


_REGISTERED: list[str] = []  # XLA's handler registry is per process: the library it holds


def _register(path: Path) -> str:
  """Load ``path`` and register its handlers, once per process; the registered library."""
  if _REGISTERED:
    return _REGISTERED[0]
  try:
    lib = ctypes.cdll.LoadLibrary(str(path))
  except OSError as err:
    raise Unavailable(f"conv_impl='onednn' could not load {path} ({err}); {INSTALL}") from err
  for name in _HANDLERS:
    jax.ffi.register_ffi_target(f"aetl_onednn_conv_{name}",
                                jax.ffi.pycapsule(getattr(lib, f"AetlOnednnConv{name}")),
                                platform="cpu")
  _REGISTERED.append(str(path))
  return str(path)


def problem() -> str | None:
  """None when the handlers are usable here (built and registered), else why not."""
  try:
    require()
  except Unavailable as why:
    return str(why)
  return None


@functools.lru_cache(maxsize=None)
def usable() -> bool:
  """Whether ``conv_impl='auto'`` runs oneDNN's convolutions here (CPU, handlers built and
  registered); where not, says why once in the log and 'auto' keeps XLA's."""
  why = problem()
  if why is not None:
    log.info("conv_impl='auto' runs XLA's convolutions: %s", why)
  return why is None


def _geometry(x, kernel, strides, padding):
  """(the handlers' int64 attributes, output shape) of a convolution padded 'SAME', 'VALID'
  or explicitly ``((top, bottom), (left, right))``."""
  from aetl_jax.models.conv_ops import _forward_geometry
  if x.dtype != np.float32 or kernel.dtype != np.float32:
    raise ValueError(f"conv_impl='onednn' computes in float32, got {x.dtype} input and "
                     f"{kernel.dtype} kernel")
  if isinstance(padding, str):
    (oh, top, bottom), (ow, left, right) = _forward_geometry(x, kernel, strides, padding)
  else:
    (top, bottom), (left, right) = padding
    oh, ow = ((n + lo + hi - k) // s + 1 for n, k, s, (lo, hi)
              in zip(x.shape[1:3], kernel.shape[:2], strides, padding))
  attrs = dict(sh=strides[0], sw=strides[1], pt=top, pb=bottom, pl=left, pr=right)
  return {k: np.int64(v) for k, v in attrs.items()}, (x.shape[0], oh, ow, kernel.shape[3])


def _call(handler: str, shape, dtype, *args, **attrs):
  require()
  # Under vmap (seeds of a cell as one program) one call per vmapped element: the handlers
  # take one NHWC batch.
  return jax.ffi.ffi_call(f"aetl_onednn_conv_{handler}", jax.ShapeDtypeStruct(shape, dtype),
                          vmap_method="sequential")(*args, **attrs)


def _forward(x, kernel, strides, padding):
  attrs, shape = _geometry(x, kernel, strides, padding)
  return _call("Forward", shape, x.dtype, x, kernel, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, strides=(1, 1), padding: str = "SAME"):
  """``conv_ops.xla_conv(x, kernel, strides, padding)`` (NHWC/HWIO, float32) by oneDNN,
  forward and both gradients."""
  return _forward(x, kernel, tuple(strides), padding)


def _conv_fwd(x, kernel, strides, padding):
  return _forward(x, kernel, tuple(strides), padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  attrs, _ = _geometry(x, kernel, tuple(strides), padding)
  dx = _call("InputGrad", x.shape, x.dtype, kernel, dy, **attrs)
  dk = _call("KernelGrad", kernel.shape, kernel.dtype, x, dy, **attrs)
  return dx, dk


conv.defvjp(_conv_fwd, _conv_bwd)


# A transposed convolution T(x; kernel) (``lax.conv_transpose``, ``transpose_kernel=False``)
# is the transpose of a strided convolution S(y; K') from its output back to its input, K' the
# kernel flipped in space with its channels swapped: T's forward pass is S's input gradient,
# T's input gradient is S's forward pass and T's kernel gradient is S's kernel gradient with x
# in the gradient's place (what oneDNN's own deconvolution does). No new handlers.
def adjoint_padding(size_hw, kernel_hw, strides, padding: str):
  """((top, bottom), (left, right)) padding of S for a transposed convolution of an input of
  ``size_hw`` ('SAME'/'VALID'), or None where S would need a negative padding (a stride
  larger than the kernel)."""
  from aetl_jax.models.conv_ops import _transpose_geometry
  pads = []
  for size, k, s in zip(size_hw, kernel_hw, strides):
    out, low = _transpose_geometry(size, k, s, padding)
    top = k - 1 - low
    pads.append((top, (size - 1) * s + k - out - top))
  return tuple(pads) if min(min(pad) for pad in pads) >= 0 else None


def _adjoint(x, kernel, strides, padding):
  """(S's attributes, T's output shape, S's kernel K')."""
  from aetl_jax.models.conv_ops import _check_padding, _transpose_geometry
  pads = adjoint_padding(x.shape[1:3], kernel.shape[:2], strides, _check_padding(padding))
  if pads is None:
    raise ValueError(f"onednn.conv_transpose needs strides {strides} no larger than the "
                     f"kernel {kernel.shape[:2]}; use conv_ops.hybrid_conv_transpose")
  out_hw = [_transpose_geometry(n, k, s, padding)[0]
            for n, k, s in zip(x.shape[1:3], kernel.shape[:2], strides)]
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  attrs, _ = _geometry(jax.ShapeDtypeStruct((1, *out_hw, kernel.shape[3]), x.dtype), flipped,
                       strides, pads)
  return attrs, (x.shape[0], *out_hw, kernel.shape[3]), flipped


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose(x, kernel, strides=(2, 2), padding: str = "SAME"):
  """``lax.conv_transpose(x, kernel, strides, padding)`` (NHWC/HWIO, float32, the kernel as
  ``nn.ConvTranspose`` holds it) by oneDNN, forward and both gradients; strides no larger
  than the kernel (:func:`adjoint_padding`)."""
  return _conv_transpose_fwd(x, kernel, strides, padding)[0]


def _conv_transpose_fwd(x, kernel, strides, padding):
  attrs, shape, flipped = _adjoint(x, kernel, tuple(strides), padding)
  return _call("InputGrad", shape, x.dtype, flipped, x, **attrs), (x, kernel)


def _conv_transpose_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  attrs, _, flipped = _adjoint(x, kernel, tuple(strides), padding)
  dx = _call("Forward", x.shape, x.dtype, dy, flipped, **attrs)
  d_flipped = _call("KernelGrad", flipped.shape, kernel.dtype, dy, x, **attrs)
  return dx, jnp.swapaxes(d_flipped, 2, 3)[::-1, ::-1]


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
