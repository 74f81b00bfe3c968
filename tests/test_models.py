"""The autoencoder family: shapes, objectives, overfitting, transplantable encoders."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate, stats

from aetl_jax.core.config import apply_overrides, flatten
from aetl_jax.models import registry
from aetl_jax.models.registry import build_classifier
from aetl_jax.models.vit import patchify, random_masking, unpatchify
from aetl_jax.objectives.autoencoders import gaussian_kl
from aetl_jax.objectives.registry import make_objective as _make_objective, model_kind
from tests.conftest import digits_config, quick_jit, uniform


def build_autoencoder(m, shape, kind=None):
  return registry.build_autoencoder(m, shape, kind or _KIND[0])


_KIND = ["autoencoder"]


def make_objective(model, m, o):
  """The objective as the tests knew it: a loss over one batch ``{'image'}``."""
  loss = _make_objective(model, o)
  return lambda params, batch, rng: loss(params, {"images": batch}, rng)

SMALL = ["model.widths=(64, 32)", "model.channels=(16, 32)", "model.vit_dim=32",
         "model.vit_depth=2", "model.vit_heads=2", "model.decoder_dim=32", "model.decoder_depth=1"]

VARIANTS = {
    "mlp/plain": ["model.family='mlp'", "objective.name='reconstruction'"],
    "mlp/plain-mse": ["model.family='mlp'", "objective.name='reconstruction'", "objective.loss='mse'"],
    "mlp/denoising-gaussian": ["objective.name='denoising'", "objective.corruption='gaussian'"],
    "mlp/denoising-masking": ["objective.name='denoising'", "objective.corruption='masking'"],
    "mlp/denoising-salt": ["objective.name='denoising'", "objective.corruption='salt_and_pepper'",
                           "objective.corruption_level=0.1"],
    "mlp/sparse-l1": ["objective.name='sparse'", "objective.sparsity='l1'"],
    "mlp/sparse-kl": ["objective.name='sparse'", "objective.sparsity='kl'",
                      "objective.sparsity_weight=0.1"],
    "mlp/vae": ["objective.name='vae'", "model.latent_dim=8"],
    "conv/transpose": ["model.family='conv'", "model.upsampling='transpose'"],
    "conv/resize": ["model.family='conv'", "model.upsampling='resize'"],
    "conv/subpixel": ["model.family='conv'", "model.upsampling='subpixel'", "model.norm='layer'"],
    "conv/vae": ["model.family='conv'", "objective.name='vae'", "model.latent_dim=8"],
    "resnet/plain": ["model.family='resnet'"],
    "vit/mae": ["model.family='vit'", "objective.name='mae'", "model.patch=2"],
    "vit/mae-normpix": ["model.family='vit'", "objective.name='mae'", "model.patch=2",
                        "model.norm_pix_loss=True"],
}


def config_for(name, *extra):
  config = digits_config(*VARIANTS[name])
  known = flatten(config)
  config = apply_overrides(config, [o for o in SMALL + list(extra) if o.split("=")[0] in known])
  _KIND[0] = model_kind(config.objective.name)
  return config


def _overfit(name, images, steps=300):
  config = config_for(name)
  model = build_autoencoder(config.model, images.shape[1:])
  params = model.init(jax.random.PRNGKey(0), images[:1], method="reconstruct")["params"]
  loss_fn = make_objective(model, config.model, config.objective)
  tx = optax.adam(3e-3)

  @jax.jit
  def metric(params, rng):
    """Reconstruction MSE where the objective reports it (BCE on grey pixels has
    a non-zero floor, the entropy of the targets); the loss itself for MAE."""
    loss, aux = loss_fn(params, {"image": images}, rng)
    return aux.get("mse", loss)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {"image": images}, rng)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, aux.get("mse", loss), grads

  opt_state = tx.init(params)
  first = None
  for i in range(steps):
    params, opt_state, loss, grads = step(params, opt_state, jax.random.PRNGKey(i))
    if first is None:
      first = float(loss)
      assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads)), name
  # Evaluate the final loss with a fixed rng, averaged over a few draws.
  last = np.mean([float(metric(params, jax.random.PRNGKey(10_000 + k))) for k in range(4)])
  return first, last


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_overfits_a_small_batch(digits, name):
  images = jnp.asarray(digits[0][:16])
  first, last = _overfit(name, images)
  # The VAE's loss keeps its KL term and the entropy of the data under a
  # Bernoulli decoder (grey pixels); the rest can approach zero.
  # MAE draws a new mask every step: an inpainting task that cannot reach zero.
  factor = 3 if name.startswith("vit/") else 5
  assert last * factor < first, (name, first, last)


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3)])
@pytest.mark.parametrize("name", ["mlp/plain", "mlp/vae", "conv/transpose", "conv/resize",
                                  "conv/subpixel", "resnet/plain", "vit/mae"])
@pytest.mark.slow
def test_output_shapes_and_transplantable_encoder(shape, name):
  patch = {8: 2, 28: 4, 32: 4}[shape[0]]
  config = config_for(name, f"model.patch={patch}")
  x = jnp.zeros((3, *shape))
  ae = build_autoencoder(config.model, shape)
  clf = build_classifier(config.model, 10, model_kind(config.objective.name))

  @quick_jit
  def outputs(x):
    params = ae.init(jax.random.PRNGKey(0), x, method="reconstruct")["params"]
    clf_params = clf.init(jax.random.PRNGKey(1), x)["params"]
    moved = {**clf_params, "encoder": params["encoder"]}
    return dict(params=params, clf_params=clf_params,
                reconstruction=ae.apply({"params": params}, x, method="reconstruct"),
                features=ae.apply({"params": params}, x, method="encode"),
                logits=clf.apply({"params": clf_params}, x),
                clf_features=clf.apply({"params": clf_params}, x, method="encode"),
                # the classifier's features equal the autoencoder's when the encoder is moved
                moved=clf.apply({"params": moved}, x + 0.5, method="encode"),
                ae_features=ae.apply({"params": params}, x + 0.5, method="encode"))

  out = outputs(x)
  assert out["reconstruction"].shape == x.shape
  assert out["logits"].shape == (3, 10)
  assert out["clf_features"].shape == out["features"].shape
  shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
  assert shapes(out["clf_params"]["encoder"]) == shapes(out["params"]["encoder"])
  np.testing.assert_allclose(out["moved"], out["ae_features"], rtol=1e-6)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75, 0.9])
def test_mae_mask_ratio_is_exact(ratio):
  _, restore, mask = random_masking(jax.random.PRNGKey(0), 7, 49, ratio)
  assert np.all(np.asarray(mask).sum(1) == round(ratio * 49))
  assert sorted(np.asarray(restore[0]).tolist()) == list(range(49))


def test_patchify_round_trip():
  x = uniform(0, (2, 8, 12, 3))
  np.testing.assert_array_equal(unpatchify(patchify(x, 4), 4, (8, 12, 3)), x)
  assert patchify(x, 4).shape == (2, 6, 48)


def test_vae_kl_matches_closed_form_integral():
  mean, logvar = np.array([0.7, -1.2]), np.array([-0.5, 0.8])
  expected = 0
  for m, lv in zip(mean, logvar):
    q = stats.norm(m, np.exp(0.5 * lv))
    expected += integrate.quad(lambda z: q.pdf(z) * (q.logpdf(z) - stats.norm.logpdf(z)),
                               -30, 30)[0]
  assert float(gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar))) == pytest.approx(expected,
                                                                                    rel=1e-6)


@pytest.mark.parametrize("name", ["mlp/denoising-masking", "mlp/vae", "vit/mae"])
def test_same_rng_same_loss_other_rng_other_loss(digits, name):
  images = jnp.asarray(digits[0][:8])
  config = config_for(name)
  model = build_autoencoder(config.model, images.shape[1:])
  params = model.init(jax.random.PRNGKey(0), images[:1], method="reconstruct")["params"]
  loss_fn = jax.jit(make_objective(model, config.model, config.objective))
  a = loss_fn(params, {"image": images}, jax.random.PRNGKey(5))[0]
  b = loss_fn(params, {"image": images}, jax.random.PRNGKey(5))[0]
  c = loss_fn(params, {"image": images}, jax.random.PRNGKey(6))[0]
  assert float(a) == float(b) and float(a) != float(c)


@pytest.mark.parametrize("overrides, shape, message", [
    (["model.family='conv'", "model.channels=(8, 16, 32, 64)"], (28, 28, 1),
     r"image height 28 is not divisible by 2\^4=16.*at most 2 strided blocks.*pad/resize the image to 32"),
    (["model.family='vit'", "objective.name='mae'", "model.patch=5"], (28, 28, 1),
     r"patch size 5 does not divide image height 28; patch sizes that fit: 1, 2, 4, 7, 14"),
    (["model.family='vit'", "objective.name='reconstruction'"], (8, 8, 1), r"family 'vit' is pretrained as one"),
])
def test_encoder_that_does_not_fit_says_what_would(overrides, shape, message):
  config = digits_config(*overrides)
  with pytest.raises(ValueError, match=message):
    build_autoencoder(config.model, shape, model_kind(config.objective.name))


@pytest.mark.slow
def test_vae_importance_sampled_nll_is_a_tighter_bound(digits):
  from aetl_jax.evaluation.vae import vae_bounds
  images = (np.asarray(digits[0][:400]) > 0.5).astype(np.float32)  # binarised
  config = config_for("mlp/vae")
  model = build_autoencoder(config.model, images.shape[1:])
  params = model.init(jax.random.PRNGKey(0), images[:1], method="reconstruct")["params"]
  loss_fn = make_objective(model, config.model, config.objective)
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    grads = jax.grad(lambda p: loss_fn(p, {"image": images}, rng)[0])(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for i in range(200):
    params, opt_state = step(params, opt_state, jax.random.PRNGKey(i))
  one = vae_bounds(model, params, images, jax.random.PRNGKey(1), num_samples=1)
  many = vae_bounds(model, params, images, jax.random.PRNGKey(1), num_samples=200)
  # With one sample the importance estimate is an unbiased estimate of the ELBO ...
  assert one["nll_is_nats"] == pytest.approx(one["neg_elbo_nats"], rel=0.03)
  # ... with many it is a tighter (lower) bound on -log p(x), still above 0.
  assert 0 < many["nll_is_nats"] < many["neg_elbo_nats"] - 0.5


def test_every_model_class_declares_what_it_can_do_and_the_declaration_is_true():
  """``CAN`` (models.capabilities) is what tasks read; it must match the class's methods, and
  a class without it is refused with its name rather than probed."""
  import inspect

  import flax.linen as nn

  from aetl_jax.models import autoencoder, ladder, sequence
  from aetl_jax.models.capabilities import Can
  from aetl_jax.models.registry import can

  declared = [c for m in (autoencoder, ladder, sequence) for _, c in inspect.getmembers(m, inspect.isclass)
              if isinstance(getattr(c, "CAN", None), Can)]
  assert {c.__name__ for c in declared} >= {"Autoencoder", "VariationalAutoencoder", "MaskedAutoencoder",
                                            "Classifier", "AutoencoderClassifier", "DomainClassifier",
                                            "AddaClassifier", "LadderNetwork", "SequenceAutoencoder"}
  for c in declared:
    assert c.CAN.reconstruct == callable(getattr(c, "reconstruct", None)), c.__name__
    assert c.CAN.classify == callable(getattr(c, "classify_features", None)), c.__name__
    assert c.CAN.init is None or callable(getattr(c, c.CAN.init, None)), c.__name__

  class Undeclared(nn.Module):
    def __call__(self, x):
      return x

  with pytest.raises(TypeError, match="Undeclared declares no capabilities"):
    can(Undeclared())
