"""The target model, and the pretrained encoder moved into it from the Orbax checkpoint."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from aetl_jax.core.rules import reinit_paths, tree_paths
from aetl_jax.engine import checkpoint
from aetl_jax.models.registry import build_classifier
from aetl_jax.objectives.registry import model_kind

log = logging.getLogger(__name__)

# Where the encoder lives inside a saved checkpoint (the driver saves {'params', 'opt_state', 'step'}).
ENCODER_SUBTREE = ("params", "encoder")


HEAD_SUBTREE = ("params", "head")


def strategy_model(config, name: str, num_classes: int, input_shape):
  """The model strategy ``name`` trains: its own (a strategy registered with ``build_model``,
  e.g. the Ladder network, built from the ``transfer`` section) or the target classifier of
  its model kind around the pretrained encoder."""
  from aetl_jax.strategies.registry import STRATEGIES, target_model_kind
  build = STRATEGIES.get(name).info.get("build_model")
  if build is not None:
    return build(config.transfer, num_classes, tuple(input_shape))
  return target_model(config, num_classes, target_model_kind(name), input_shape)


def target_model(config, num_classes: int, kind: str, input_shape):
  """The classifier a strategy trains: encoder + head (+ decoder for joint objectives, + a
  domain classifier for adversarial adaptation)."""
  t = config.get("transfer", {})
  key = "adda_discriminator" if kind == "adda" else "domain_hidden"
  hidden = t.get(key, (100,))
  hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
  return _target_model(config.model.to_json(), config.objective.name, num_classes, kind,
                       tuple(input_shape), hidden, t.get("adda_features", "logits"))


@functools.lru_cache(maxsize=16)
def _target_model(model_json: str, objective: str, num_classes: int, kind: str, input_shape,
                  domain_hidden: tuple, adda_features: str = "logits"):
  import ml_collections
  m = ml_collections.ConfigDict(__import__("json").loads(model_json))
  adversarial = kind in ("domain_classifier", "adda")
  return build_classifier(m, num_classes, model_kind(objective),
                          decoder_shape=input_shape if kind == "autoencoder_classifier" else None,
                          domain_hidden=domain_hidden if adversarial else None, adda=kind == "adda",
                          adda_features=adda_features)


def load_head(ckpt_dir, template):
  """The classification head of a classifier pretrained on the labelled source."""
  return checkpoint.restore_subtree(ckpt_dir, template["head"], subtree=HEAD_SUBTREE)[1]


def load_encoder(config, ckpt_dir, template):
  """(step, encoder restored from ``ckpt_dir``, re-initialised paths) for ``template``'s encoder."""
  sidecar = checkpoint.read_sidecar(ckpt_dir)
  if sidecar is not None and sidecar.get("family") != config.model.family:
    raise checkpoint.CheckpointError(
        f"checkpoint in {ckpt_dir} holds a '{sidecar.get('family')}' encoder but the target model "
        f"is '{config.model.family}'; use the same model.family for pretraining and transfer")
  # Re-init patterns are full classifier paths ('encoder/block_2/.*') like every other rule.
  reinit = [p.removeprefix("encoder/") for p in
            reinit_paths({"encoder": template["encoder"]}, tuple(config.transfer.reinit))]
  if reinit:
    log.warning("transfer: re-initialising instead of loading: %s", ", ".join(reinit))
  step, encoder = checkpoint.restore_subtree(ckpt_dir, template["encoder"], reinit=tuple(reinit),
                                             subtree=ENCODER_SUBTREE)
  return step, encoder, reinit


def backbone_weights(m, template, workdir):
  """The encoder ``model.weights`` names, in the structure of ``template`` (an encoder subtree).

  ``checkpoint:DIR``: the encoder of DIR's pretraining (DIR a workdir, or its
  ``pretrain/checkpoints``). ``torchvision:NAME``: torchvision's ResNet-18 weights,
  converted once and saved with Orbax in ``WORKDIR/pretrain/backbone`` (reruns read that
  copy, without torch). Leaves the source lacks (a ``code`` layer) keep ``template``'s
  values.
  """
  kind, _, value = m.weights.partition(":")
  if kind == "checkpoint":
    directory = Path(value)
    if (directory / "pretrain" / "checkpoints").is_dir():
      directory = directory / "pretrain" / "checkpoints"
    sidecar = checkpoint.read_sidecar(directory)
    if sidecar is not None and sidecar.get("family") != m.family:
      raise checkpoint.CheckpointError(
          f"model.weights={m.weights!r} holds a '{sidecar.get('family')}' encoder, not "
          f"'{m.family}'")
    saved = checkpoint.saved_shapes(directory, ENCODER_SUBTREE)
    absent = tuple(p for p in tree_paths(template) if p not in saved)  # e.g. a new code layer
    return checkpoint.restore_subtree(directory, template, subtree=ENCODER_SUBTREE,
                                      reinit=absent)[1]
  cache = Path(workdir) / "pretrain" / "backbone"
  own = {k: v for k, v in template.items() if k != "code"}
  if not checkpoint.finished_steps(cache):
    from aetl_jax.models.torchvision import torchvision_encoder
    tree = torchvision_encoder(value, own)
    manager = checkpoint.make_manager(cache)
    checkpoint.save(manager, 0, {"params": {"encoder": tree}})
    manager.close()
    log.info("converted torchvision ResNet-18 %s into %s", value, cache)
  loaded = checkpoint.restore_subtree(cache, own, subtree=ENCODER_SUBTREE)[1]
  return {**template, **loaded}
