"""Every matmul formulation computes exactly what nn.Conv / nn.ConvTranspose compute.

Outputs and gradients (with respect to parameters and inputs) to float
tolerance, with the same parameter trees, so checkpoints move between
implementations. The comparisons compile without LLVM's optimisations
(``conftest.quick_jit``): the subject is the formulations' arithmetic.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aetl_jax.models.conv import depth_to_space
from aetl_jax.models.conv_ops import (FormulatedConv, FormulatedConvTranspose, bias_add,
                                      choose_formulation, conv_class, conv_transpose_class,
                                      materialised, resolve_conv_impl, subpixel_conv_transpose,
                                      xla_conv)
from aetl_jax.engine.compiler import train_compiler_options
from tests.conftest import normal, quick_jit, uniform


def _assert_same_functions(pairs, x):
  """Each ``(reference, ours)`` module pair of ``pairs`` (name → pair) has the same parameter
  tree and computes the same outputs and gradients (parameters and input) from the same
  parameters. Every pair is compiled into one program (one compilation per test instead of
  four per pair); every mismatch is reported, each by its name."""
  key = jax.random.PRNGKey(1)
  for name, (ref, ours) in pairs.items():
    shapes = lambda m: jax.tree.map(jnp.shape, jax.eval_shape(m.init, key, x))
    assert shapes(ref) == shapes(ours), name

  @quick_jit
  def outputs_and_grads(x):
    out = {}
    for name, (ref, ours) in pairs.items():
      params = ref.init(key, x)
      for side, module in (("reference", ref), ("ours", ours)):
        loss = lambda p, x, module=module: jnp.sum(jnp.sin(module.apply(p, x)))
        out[name, side] = (module.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x))
    return out

  out = outputs_and_grads(x)
  failures = []
  for name in pairs:
    (y_ref, g_ref), (y, g) = out[name, "reference"], out[name, "ours"]
    try:
      assert y.shape == y_ref.shape, (y.shape, y_ref.shape)
      np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5, err_msg="output")
      for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg="gradient")
    except AssertionError as error:
      failures.append(f"{name}: {error}")
  assert not failures, "\n".join(failures)


GEOMETRIES = [((8, 8), 3, 1, "SAME"), ((8, 8), 3, 2, "SAME"), ((7, 9), 3, 2, "SAME"),
              ((28, 28), 3, 2, "SAME"), ((6, 6), 4, 2, "SAME"), ((9, 7), 3, 1, "VALID"),
              ((8, 8), 2, 2, "VALID"), ((5, 6), 5, 3, "SAME")]


@pytest.mark.slow
@pytest.mark.parametrize("hw, k, stride, padding", GEOMETRIES)
def test_conv_formulations_match_nn_conv(hw, k, stride, padding):
  """cout 1 takes the spatial-minor shift-add layout (narrow outputs)."""
  x = normal(0, (2, *hw, 3))
  conv = dict(strides=(stride, stride), padding=padding)
  _assert_same_functions({
      f"{formulation}, cout {cout}": (nn.Conv(cout, (k, k), **conv),
                                      FormulatedConv(cout, (k, k), formulation=formulation, **conv))
      for formulation in ("xla", "patches", "shift_add", "hybrid") for cout in (1, 9)}, x)


STRIDE_1 = [g for g in GEOMETRIES if g[2] == 1] + [((6, 5), 2, 1, "SAME"), ((6, 5), 4, 1, "SAME"),
                                                   ((5, 7), 1, 1, "VALID")]


@pytest.mark.slow
@pytest.mark.parametrize("hw, k, stride, padding", STRIDE_1)
def test_narrow_formulation_matches_nn_conv(hw, k, stride, padding):
  """Its backward is hand-written (custom_vjp): even kernels put the padding off-centre."""
  x = normal(0, (2, *hw, 5))
  _assert_same_functions({
      f"kernel {kernel}, cout {cout}": (nn.Conv(cout, kernel, padding=padding),
                                        FormulatedConv(cout, kernel, padding=padding,
                                                       formulation="narrow"))
      for kernel in ((k, k), (k, k - 1 or 1)) for cout in (1, 3)}, x)  # no branch on cout


def test_narrow_formulation_refuses_strides():
  with pytest.raises(ValueError, match="stride 1"):
    FormulatedConv(1, (3, 3), strides=(2, 2), formulation="narrow").init(
        jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 2)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's fusion decisions")
def test_hybrid_kernel_gradients_read_a_stored_input_after_xla_s_passes():
  """The conditional that keeps a ReLU out of the kernel gradient's layout transpose is
  still in the compiled program (XLA removes one it can fold), and changes no value."""
  x = normal(0, (2, 8, 8, 4))
  for module in (FormulatedConv(8, (3, 3), formulation="hybrid"),
                 FormulatedConvTranspose(8, (4, 4), (2, 2), formulation="hybrid")):
    params = module.init(jax.random.PRNGKey(0), x)
    loss = lambda p, x, module=module: jnp.sum(module.apply(p, nn.relu(x)) ** 2)
    text = jax.jit(jax.grad(loss)).lower(params, x).compile().as_text()
    assert " conditional(" in text, type(module).__name__
  y = x.at[0, 0, 0, 0].set(jnp.nan)
  np.testing.assert_array_equal(jax.jit(materialised)(y), y)
  np.testing.assert_array_equal(jax.jit(materialised)(x), x)


def test_bias_add_gradient_is_the_sum_over_every_axis_but_channels():
  y = normal(0, (2, 3, 4, 5))
  b = normal(1, (5,))
  g = normal(2, y.shape)
  ours = jax.vjp(bias_add, y, b)[1](g)
  ref = jax.vjp(lambda y, b: y + b, y, b)[1](g)
  np.testing.assert_allclose(bias_add(y, b), y + b)
  for a, r in zip(ours, ref):
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor, channels", [(2, 4), (2, 12), (3, 18)])
def test_depth_to_space_is_the_textbook_transpose(factor, channels):
  x = normal(0, (2, 3, 5, channels))
  c = channels // factor ** 2
  ref = x.reshape(2, 3, 5, factor, factor, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      2, 3 * factor, 5 * factor, c)
  np.testing.assert_array_equal(depth_to_space(x, factor), ref)
  with pytest.raises(ValueError, match="not divisible"):
    depth_to_space(x[..., :channels - 1], factor)


@pytest.mark.parametrize("hw, k, stride, padding", GEOMETRIES + [((7, 7), 4, 2, "VALID"),
                                                                 ((4, 5), 2, 3, "SAME"),
                                                                 ((5, 4), 3, 2, "VALID")])
@pytest.mark.slow
def test_transposed_formulations_match_nn_conv_transpose(hw, k, stride, padding):
  x = normal(0, (2, *hw, 3))
  conv = dict(strides=(stride, stride), padding=padding)
  _assert_same_functions({
      f"{formulation}, cout {cout}": (
          nn.ConvTranspose(cout, (k, k), **conv),
          FormulatedConvTranspose(cout, (k, k), formulation=formulation, **conv))
      for formulation in ("xla", "overlap_add", "subpixel", "subpixel_patches", "hybrid")
      for cout in (1, 9)}, x)


def test_subpixel_transposed_conv_handles_unequal_strides_and_kernels():
  x = normal(0, (2, 5, 6, 3))
  conv = dict(strides=(2, 3), padding="SAME")
  _assert_same_functions({
      formulation: (nn.ConvTranspose(4, (4, 3), **conv),
                    FormulatedConvTranspose(4, (4, 3), formulation=formulation, **conv))
      for formulation in ("subpixel", "subpixel_patches")}, x)


def test_per_layer_choice_takes_the_smaller_intermediate():
  assert choose_formulation((14, 14), (14, 14), 64, 128) == "patches"
  assert choose_formulation((28, 28), (28, 28), 32, 1) == "shift_add"
  assert choose_formulation((28, 28), (14, 14), 1, 32) == "patches"  # stride 2: 4× fewer rows


@pytest.mark.slow
def test_bad_formulation_and_padding_are_named():
  x = jnp.zeros((1, 4, 4, 2))
  with pytest.raises(ValueError, match="auto, xla, patches, shift_add, narrow, hybrid"):
    FormulatedConv(3, (3, 3), formulation="fft").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="'SAME' or 'VALID'"):
    FormulatedConv(3, (3, 3), padding="CIRCULAR").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="xla, overlap_add, subpixel, subpixel_patches, hybrid"):
    FormulatedConvTranspose(3, (4, 4), formulation="fft").init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match="valid: xla, patches"):
    subpixel_conv_transpose(x, jnp.zeros((4, 4, 2, 3)), phase_conv="fft")


@pytest.mark.slow
@pytest.mark.parametrize("upsampling", ["transpose", "subpixel", "resize"])
def test_conv_autoencoder_is_the_same_function_with_every_impl(upsampling):
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.api import load_config
  from aetl_jax.tasks.transfer import default_config
  x = uniform(0, (2, 28, 28, 1))
  models = {impl: build_autoencoder(load_config(default_config(), [
      "model.family='conv'", f"model.upsampling='{upsampling}'", f"model.conv_impl='{impl}'"]
  ).model, x.shape[1:]) for impl in ("xla", "hybrid", "im2col", "shift_add", "matmul", "auto")}
  init = lambda model: model.init(jax.random.PRNGKey(3), x, method="reconstruct")["params"]
  shapes = {impl: jax.tree.map(jnp.shape, jax.eval_shape(lambda m=m: init(m)))
            for impl, m in models.items()}

  @quick_jit
  def outputs_and_grads(x):  # every impl from the xla model's parameters, in one program
    params = init(models["xla"])
    out = {}
    for impl, model in models.items():
      reconstruct = lambda p, model=model: model.apply({"params": p}, x, method="reconstruct")
      grads = jax.grad(lambda p: jnp.mean(jnp.square(reconstruct(p) - x)))(params)
      out[impl] = (reconstruct(params), grads)
    return out

  outs = outputs_and_grads(x)
  for impl, (y, g) in outs.items():
    assert shapes[impl] == shapes["xla"], impl
    np.testing.assert_allclose(y, outs["xla"][0], rtol=1e-4, atol=1e-4, err_msg=impl)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(outs["xla"][1])):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=impl)


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="oneDNN's custom calls are CPU's")
def test_onednn_conv_autoencoder_is_the_xla_one_or_the_config_says_what_is_missing(tmp_path,
                                                                                monkeypatch):
  """With a compiler and a system oneDNN, conv_impl='onednn' computes the conv AE's outputs
  and gradients (strided encoder, wide sub-pixel or transposed decoder) as XLA's do; without
  them the config is refused in one line naming the install command."""
  from aetl_jax.api import load_config
  from aetl_jax.core.config import ConfigError
  from aetl_jax.models import onednn
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.tasks.transfer import default_config
  from aetl_jax.validation import validate_transfer_config
  monkeypatch.setenv("AETL_CACHE", str(tmp_path))  # a fresh build, written here
  overrides = ["model.family='conv'", "model.upsampling='subpixel'"]
  onednn_config = lambda: load_config(default_config(), overrides + ["model.conv_impl='onednn'"])
  with monkeypatch.context() as m:  # a machine without a compiler
    m.setattr(onednn.shutil, "which", lambda _: None)
    onednn.require.cache_clear()
    with pytest.raises(ConfigError, match=r"^config key 'model.conv_impl': .*g\+\+\) and oneDNN \(pip install "
                                         r"onednn-devel-cpu-gomp or apt-get install libdnnl-dev\)$"):
      validate_transfer_config(onednn_config())
  onednn.require.cache_clear()
  if onednn.problem() is not None:  # this machine: no oneDNN to compare with
    assert "pip install onednn-devel-cpu-gomp" in onednn.problem()
    return
  assert list(tmp_path.glob("onednn_conv-*.so"))  # built where AETL_CACHE points
  x = uniform(0, (3, 28, 28, 1))
  models = {impl: build_autoencoder(load_config(default_config(), overrides + [
      f"model.conv_impl='{impl}'"]).model, x.shape[1:]) for impl in ("xla", "onednn")}
  params = models["xla"].init(jax.random.PRNGKey(3), x, method="reconstruct")["params"]
  out = {}
  for impl, model in models.items():
    reconstruct = lambda p, model=model: model.apply({"params": p}, x, method="reconstruct")
    loss = lambda p, reconstruct=reconstruct: jnp.mean(jnp.square(reconstruct(p) - x))
    out[impl] = jax.jit(lambda p, r=reconstruct, l=loss: (r(p), jax.grad(l)(p)))(params)
  np.testing.assert_allclose(out["onednn"][0], out["xla"][0], rtol=1e-4, atol=1e-4)
  for a, b in zip(jax.tree.leaves(out["onednn"][1]), jax.tree.leaves(out["xla"][1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  text = jax.jit(lambda p: jax.grad(lambda q: jnp.sum(models["onednn"].apply(
      {"params": q}, x, method="reconstruct")))(p)).lower(params).as_text()
  assert text.count("aetl_onednn_conv_") >= 3 * 3  # 3 wide convolutions, 3 passes each
  xs, k = uniform(1, (2, 3, 7, 7, 4)), uniform(2, (3, 3, 4, 8))  # vmapped, as seeds are
  loss = lambda conv: lambda k, x: jnp.sum(jnp.sin(conv(x, k, (2, 2), "SAME")))
  grads = {name: jax.jit(jax.vmap(jax.grad(loss(conv), argnums=(0, 1)), in_axes=(None, 0)))(k, xs)
           for name, conv in (("xla", xla_conv), ("onednn", onednn.conv))}
  for a, b in zip(grads["onednn"], grads["xla"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  _check_onednn_transposed(models, overrides, x)


def _check_onednn_transposed(models, overrides, x):
  """oneDNN's transposed convolutions: lax.conv_transpose's outputs and gradients for
  'SAME'/'VALID', kernels larger than, equal to and one more than the stride, odd sizes,
  vmapped; strides larger than the kernel go to 'hybrid'; the transposed-conv AE as XLA's."""
  from aetl_jax.api import load_config
  from aetl_jax.models import onednn
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.tasks.transfer import default_config
  reference = lambda x, k, s, pad: jax.lax.conv_transpose(
      x, k, s, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for shape, ksize, strides, pad in [((7, 7), 4, (2, 2), "SAME"), ((5, 6), 3, (2, 2), "SAME"),
                                     ((5, 6), 3, (2, 1), "VALID"), ((4, 3), 2, (2, 2), "SAME"),
                                     ((5, 5), 3, (3, 3), "VALID"), ((6, 5), 3, (1, 1), "SAME")]:
    xs, k = uniform(4, (2, 3, *shape, 5)), uniform(5, (ksize, ksize, 5, 9))
    loss = lambda conv: lambda k, x: jnp.sum(jnp.sin(conv(x, k, strides, pad)))
    got = {name: jax.jit(jax.vmap(lambda k, x, c=conv: (c(x, k, strides, pad),
                                                        jax.grad(loss(c), argnums=(0, 1))(k, x)),
                                  in_axes=(None, 0)))(k, xs)
           for name, conv in (("xla", reference), ("onednn", onednn.conv_transpose))}
    for a, b in zip(jax.tree.leaves(got["onednn"]), jax.tree.leaves(got["xla"])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"{shape} {ksize} {strides}")
  assert onednn.adjoint_padding((5, 5), (2, 2), (3, 3), "SAME") is None
  with pytest.raises(ValueError, match="no larger than the kernel"):
    onednn.conv_transpose(uniform(6, (1, 5, 5, 2)), uniform(7, (2, 2, 2, 8)), (3, 3), "SAME")
  overrides = [o for o in overrides if "upsampling" not in o] + ["model.upsampling='transpose'"]
  models = {impl: build_autoencoder(load_config(default_config(), overrides + [
      f"model.conv_impl='{impl}'"]).model, x.shape[1:]) for impl in ("xla", "onednn")}
  params = models["xla"].init(jax.random.PRNGKey(3), x, method="reconstruct")["params"]
  losses = {impl: jax.jit(jax.value_and_grad(lambda p, m=model: jnp.mean(jnp.square(
      m.apply({"params": p}, x, method="reconstruct") - x))))(params)
      for impl, model in models.items()}
  for a, b in zip(jax.tree.leaves(losses["onednn"]), jax.tree.leaves(losses["xla"])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  text = jax.jit(jax.grad(lambda q: jnp.sum(models["onednn"].apply(
      {"params": q}, x, method="reconstruct")))).lower(params).as_text()
  # 2 strided and 2 transposed convolutions, 3 passes each (the image has no input gradient)
  assert text.count("aetl_onednn_conv_") == 3 * 4 - 1


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="oneDNN's custom calls are CPU's")
def test_the_installed_onednn_builds_so_auto_runs_it(tmp_path, monkeypatch):
  """Where the package's oneDNN dependency installs (x86-64 Linux) and a compiler is here,
  the handlers build against the environment's oneDNN and load (else 'auto' would quietly
  run XLA's convolutions); the build is keyed by that oneDNN."""
  import platform
  import shutil
  import sys

  from aetl_jax.models import onednn
  if not (sys.platform == "linux" and platform.machine() == "x86_64" and shutil.which("g++")):
    pytest.skip("oneDNN is a dependency on x86-64 Linux only, and builds with g++")
  root = onednn.environment_onednn()
  assert root is not None, "onednn-devel-cpu-gomp's headers and libdnnl.so are not installed"
  monkeypatch.setenv("AETL_CACHE", str(tmp_path))
  onednn.require.cache_clear()
  try:
    assert onednn.problem() is None
    built = onednn._library_path()
    assert built.exists() and built.parent == tmp_path
    with monkeypatch.context() as m:  # a system oneDNN is another build
      m.setattr(onednn, "environment_onednn", lambda: None)
      assert onednn._library_path() != built
  finally:
    onednn.require.cache_clear()


def test_resolve_conv_impl(monkeypatch):
  from aetl_jax.models import onednn
  for usable, chosen in ((True, "onednn"), (False, "hybrid")):  # oneDNN's where it builds
    monkeypatch.setattr(onednn, "usable", lambda usable=usable: usable)
    assert resolve_conv_impl("auto", backend="cpu") == chosen
  assert resolve_conv_impl("auto", backend="gpu") == "xla"
  assert resolve_conv_impl("auto", backend="tpu") == "xla"
  assert resolve_conv_impl("matmul", backend="gpu") == "matmul"
  assert conv_class("xla") is nn.Conv and conv_transpose_class("xla") is nn.ConvTranspose
  assert conv_transpose_class("hybrid").keywords["formulation"] == "hybrid"
  assert conv_transpose_class("matmul").keywords["formulation"] == "subpixel_patches"
  assert conv_transpose_class("im2col").keywords["formulation"] == "subpixel_patches"
  assert conv_transpose_class("shift_add").keywords["formulation"] == "overlap_add"
  assert conv_class("onednn").keywords["formulation"] == "onednn"
  assert conv_transpose_class("onednn").keywords["formulation"] == "onednn"
  with pytest.raises(ValueError, match="auto, xla, hybrid, onednn, im2col, shift_add, matmul"):
    resolve_conv_impl("winograd")


def test_train_compiler_options_are_accepted_by_this_xla():
  assert train_compiler_options("mlp") == {}
  assert train_compiler_options("conv", backend="gpu") == {}
  options = train_compiler_options("conv")
  if jax.default_backend() == "cpu":
    assert options  # the installed jaxlib knows the option (else it is dropped, and this fails)
  step = jax.jit(lambda x: jnp.sum(nn.Conv(2, (3, 3)).apply(
      nn.Conv(2, (3, 3)).init(jax.random.PRNGKey(0), x), x)), compiler_options=options or None)
  assert np.isfinite(float(step(jnp.ones((1, 6, 6, 1)))))
