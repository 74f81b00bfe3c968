"""Objectives with several data streams: domain adaptation and semi-supervised terms.

Roles: ``source`` (labelled source images), ``images`` (unlabelled target
images), ``labelled`` (the target's few labels; optional — absent at budget 0).
Every objective is cross-entropy on every labelled batch it is given plus
``weight`` × an unsupervised term, each term logged:

* ``drcn`` — reconstruction of the target images by the shared encoder's
  decoder (Ghifary et al. 2016);
* ``dann`` — a domain classifier on the codes behind a gradient-reversal layer
  (Ganin & Lempitsky 2015): the head of the domain classifier learns to tell
  the domains apart, the encoder receives the negated gradient;
* ``coral`` / ``mmd`` — alignment of the source and target codes' second-order
  statistics (Sun & Saenko 2016) or their kernel mean embeddings (RBF MMD²);
* ``pseudo_label`` — confidence-thresholded pseudo-labels on weakly augmented
  target images, learned on strongly augmented ones (FixMatch, Sohn et al. 2020).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aetl_jax.objectives.augmentation import augment, check_chain
from aetl_jax.objectives.classification import cross_entropy
from aetl_jax.objectives.reconstruction import LOSS_KEY, reconstruction_error
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.core.registry import Key, at_least, within

LABELLED_ROLES = ("source", "labelled")


@jax.custom_vjp
def reverse_gradient(x, scale):
  """Identity forward; the gradient flowing back is multiplied by ``-scale`` (a number or a
  traced scalar, e.g. a weight ramped over training; it receives no gradient)."""
  return x


def _rg_fwd(x, scale):
  return x, scale


def _rg_bwd(scale, g):
  return -scale * g, jnp.zeros_like(scale)


reverse_gradient.defvjp(_rg_fwd, _rg_bwd)


def dann_ramp(progress, gamma: float = 10.0):
  """DANN's gradient-reversal weight over training progress p in [0, 1]:
  2 / (1 + exp(-gamma p)) - 1 (Ganin et al. 2016, section 5.2.2): 0 at the start, so the
  domain classifier's noisy early gradients do not disturb the features, then towards 1."""
  return 2.0 / (1.0 + jnp.exp(-gamma * progress)) - 1.0


def coral_distance(a, b):
  """‖Cov(a) − Cov(b)‖²_F / (4 d²) of two batches of codes (N, d)."""
  d = a.shape[-1]

  def cov(x):
    x = x - x.mean(0, keepdims=True)
    return x.T @ x / (x.shape[0] - 1)

  return jnp.sum((cov(a) - cov(b)) ** 2) / (4.0 * d * d)


def mmd2(a, b, bandwidths=(1.0, 2.0, 4.0, 8.0, 16.0)):
  """Biased RBF-kernel MMD² (sum of kernels of several bandwidths, scaled by the codes'
  mean squared distance); 0 for identical batches."""
  x = jnp.concatenate([a, b])
  sq = jnp.sum((x[:, None] - x[None]) ** 2, -1)
  scale = jax.lax.stop_gradient(jnp.mean(sq)) + 1e-8
  k = sum(jnp.exp(-sq / (scale * w)) for w in bandwidths)
  n = a.shape[0]
  return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def _supervised(model, params, batches, rng):
  """(sum of the cross-entropies of every labelled role present, metrics, codes by role)."""
  total, metrics, codes = 0.0, {}, {}
  for i, role in enumerate(r for r in LABELLED_ROLES if r in batches):
    b = batches[role]
    z = model.apply({"params": params}, b["image"], train=True,
                    rngs={"dropout": jax.random.fold_in(rng, i)}, method="encode")
    ce, acc = cross_entropy(model.apply({"params": params}, z, method="classify_features"), b["label"])
    total = total + ce
    metrics.update({f"{role}_classification": ce, f"{role}_accuracy": acc})
    codes[role] = z
  metrics["accuracy"] = metrics.get("labelled_accuracy", metrics.get("source_accuracy", 0.0))
  return total, metrics, codes


def _target_codes(model, params, images, rng):
  return model.apply({"params": params}, images, train=True, rngs={"dropout": rng}, method="encode")


# The weight of an objective's unsupervised term.
WEIGHT_KEY = Key(1.0, "weight of the unsupervised term", at_least(0), value=True)


@OBJECTIVES.register("drcn", model="autoencoder_classifier", roles=("source", "images"),
                     defaults=dict(weight=WEIGHT_KEY, loss=LOSS_KEY))
def drcn(model, o):
  """Cross-entropy on labelled batches + ``weight`` × reconstruction of the target images."""

  def loss_fn(params, batches, rng):
    r_sup, r_rec = jax.random.split(rng)
    ce, metrics, _ = _supervised(model, params, batches, r_sup)
    x = batches["images"]["image"]
    logits, _ = model.apply({"params": params}, x, train=True, rngs={"dropout": r_rec},
                            method="with_code")
    recon = jnp.mean(reconstruction_error(logits, x, o.loss))
    return ce + o.weight * recon, {**metrics, "reconstruction": recon}

  return loss_fn


def binary_cross_entropy(logits, targets):
  """Mean sigmoid cross-entropy of logits against 0/1 targets (numerically stable)."""
  return jnp.mean(jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits))))


@OBJECTIVES.register("dann", model="domain_classifier", roles=("source", "images"),
                     defaults=dict(
                         weight=WEIGHT_KEY,
                         ramp=Key(True, "ramp the gradient-reversal weight 2/(1+exp(-10p))-1 over training progress p")))
def dann(model, o):
  """Cross-entropy + domain classification of source (0) and target (1) codes through a
  gradient-reversal layer scaled by ``weight`` × the DANN ramp of training progress
  (:func:`dann_ramp`; ``ramp=False``: ``weight`` throughout)."""

  def loss_fn(params, batches, rng):
    r_sup, r_tgt = jax.random.split(rng)
    ce, metrics, codes = _supervised(model, params, batches, r_sup)
    z_s = codes["source"]
    z_t = _target_codes(model, params, batches["images"]["image"], r_tgt)
    scale = o.weight * (dann_ramp(batches["progress"]) if o.ramp else 1.0)
    z = reverse_gradient(jnp.concatenate([z_s, z_t]), jnp.asarray(scale, z_s.dtype))
    domain = jnp.concatenate([jnp.zeros(len(z_s)), jnp.ones(len(z_t))])
    logits = model.apply({"params": params}, z, method="domain_logits")[:, 0]
    bce = binary_cross_entropy(logits, domain)
    domain_acc = jnp.mean((logits > 0) == (domain > 0.5))
    return ce + bce, {**metrics, "domain": bce, "domain_accuracy": domain_acc,
                      "reversal_weight": jnp.asarray(scale, jnp.float32)}

  return loss_fn


def _adda_features(model, params, images, rng, method: str):
  return model.apply({"params": params}, images, train=True, rngs={"dropout": rng}, method=method)


@OBJECTIVES.register("adda_target", model="adda", roles=("source", "images"),
                     defaults={})
def adda_target(model, o):
  """ADDA's target encoder (Tzeng et al. 2017, eq. 9): the GAN loss with inverted labels,
  -log D(M_t(x_t)), so the target codes (or logits) pass for source ones; + cross-entropy of
  the head on the target's labelled batch when there is one."""
  del o

  def loss_fn(params, batches, rng):
    r_t, r_l = jax.random.split(rng)
    z_t = _adda_features(model, params, batches["images"]["image"], r_t, "target_features")
    logits = model.apply({"params": params}, z_t, method="domain_logits")[:, 0]
    fool = binary_cross_entropy(logits, jnp.ones_like(logits))
    metrics = {"mapping": fool}
    loss = fool
    if "labelled" in batches:
      ce, sup, _ = _supervised(model, params, {"labelled": batches["labelled"]}, r_l)
      loss, metrics = loss + ce, {**metrics, **sup}
    return loss, metrics

  return loss_fn


@OBJECTIVES.register("adda_discriminator", model="adda", roles=("source", "images"),
                     defaults={})
def adda_discriminator(model, o):
  """ADDA's discriminator (eq. 8): source codes M_s(x_s) are 1, target codes M_t(x_t) are 0
  (or the two classifiers' logits: ``AddaClassifier.adversary_on``)."""
  del o

  def loss_fn(params, batches, rng):
    r_s, r_t = jax.random.split(rng)
    z_s = _adda_features(model, params, batches["source"]["image"], r_s, "source_features")
    z_t = _adda_features(model, params, batches["images"]["image"], r_t, "target_features")
    logits = model.apply({"params": params}, jnp.concatenate([z_s, z_t]),
                         method="domain_logits")[:, 0]
    domain = jnp.concatenate([jnp.ones(len(z_s)), jnp.zeros(len(z_t))])
    return binary_cross_entropy(logits, domain), {
        "domain_accuracy": jnp.mean((logits > 0) == (domain > 0.5))}

  return loss_fn


def _alignment(distance):
  def make(model, o):
    def loss_fn(params, batches, rng):
      r_sup, r_tgt = jax.random.split(rng)
      ce, metrics, codes = _supervised(model, params, batches, r_sup)
      z_t = _target_codes(model, params, batches["images"]["image"], r_tgt)
      gap = distance(codes["source"], z_t)
      return ce + o.weight * gap, {**metrics, "alignment": gap}
    return loss_fn
  return make


OBJECTIVES.register("coral", model="classifier", roles=("source", "images"),
                    defaults=dict(
                        weight=WEIGHT_KEY))(_alignment(coral_distance))
OBJECTIVES.register("mmd", model="classifier", roles=("source", "images"),
                    defaults=dict(
                        weight=WEIGHT_KEY))(_alignment(mmd2))


def _check_pseudo(o) -> None:
  check_chain(o.weak, "objective.weak")
  check_chain(o.strong, "objective.strong")


@OBJECTIVES.register("pseudo_label", model="classifier", roles=("labelled", "images"),
                     validate=_check_pseudo,
                     defaults=dict(
                         weight=WEIGHT_KEY,
                         confidence=Key(0.95, "a pseudo-label counts when its probability is at least this",
                                        within(0, 1, closed="[)"), value=True),
                         weak=Key((("translate", 0.1),), "augmentation chain of the pseudo-labelled views"),
                         strong=Key((("translate", 0.125), ("rotate", 15), ("cutout", 0.25), ("noise", 0.1)), "augmentation chain of the learned views")))
def pseudo_label(model, o):
  """Cross-entropy on weakly augmented labelled batches + ``weight`` × cross-entropy of the
  strongly augmented target images against the model's own confident (``confidence``)
  predictions on weak views (no gradient through the pseudo-labels)."""
  weak, strong = check_chain(o.weak, "objective.weak"), check_chain(o.strong, "objective.strong")

  def loss_fn(params, batches, rng):
    r_lab, r_weak, r_strong, r_sup, r_u = jax.random.split(rng, 5)
    labelled = {r: {**b, "image": augment(jax.random.fold_in(r_lab, i), b["image"], weak)}
                for i, (r, b) in enumerate(batches.items()) if r in LABELLED_ROLES}
    ce, metrics, _ = _supervised(model, params, labelled, r_sup)
    u = batches["images"]["image"]
    probs = jax.nn.softmax(model.apply({"params": params}, augment(r_weak, u, weak)))
    probs = jax.lax.stop_gradient(probs)
    mask = (probs.max(-1) >= o.confidence).astype(jnp.float32)
    logits = model.apply({"params": params}, augment(r_strong, u, strong), train=True,
                         rngs={"dropout": r_u})
    per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits), probs.argmax(-1)[:, None], 1)[:, 0]
    unsup = jnp.sum(mask * per_example) / u.shape[0]
    return ce + o.weight * unsup, {**metrics, "pseudo_label": unsup, "mask_rate": mask.mean()}

  return loss_fn
