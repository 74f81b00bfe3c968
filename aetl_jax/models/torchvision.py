"""torchvision ResNet-18 ``state_dict`` → the Flax tree of ``models.resnet18.ResNet18``.

Keys map one to one (``layer1.0.bn1.running_mean`` → ``layer1/0/bn1/running_mean``);
conv kernels go from torch's (out, in, h, w) to Flax's (h, w, in, out), dense
kernels are transposed, BatchNorm ``weight`` becomes ``scale``, and
``num_batches_tracked`` is dropped. torch and torchvision are needed only to
*obtain* a state_dict (:func:`torchvision_state_dict`, the optional ``torch``
extra); the converted tree is saved with Orbax and used without them.

``model.weights`` names where a backbone's weights come from:
``torchvision:IMAGENET1K_V1`` (downloaded through torchvision) or
``checkpoint:DIR`` (the encoder of another run's pretraining, e.g. a ResNet-18
trained on a labelled source by this project).
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

from aetl_jax.core.rules import path_str

TORCHVISION_WEIGHTS = ("IMAGENET1K_V1",)
INSTALL = "pip install 'aetl_jax[torch]' (torch and torchvision)"


def check_weights(spec: str) -> None:
  """ValueError naming the valid forms of ``model.weights``."""
  if not spec:
    return
  kind, _, value = str(spec).partition(":")
  if kind == "torchvision" and value in TORCHVISION_WEIGHTS:
    return
  if kind == "checkpoint" and value:
    return
  raise ValueError(f"model.weights={spec!r} is not valid; valid: '' (random initialisation), "
                   + ", ".join(f"'torchvision:{w}'" for w in TORCHVISION_WEIGHTS)
                   + ", or 'checkpoint:DIR' (a workdir whose pretraining trained this family)")


def _torch_key(path: str) -> tuple[str, str]:
  """(torch key, leaf kind) of a Flax path."""
  *mods, leaf = path.split("/")
  name = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
  return ".".join([*mods, name]), leaf


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel":
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def convert_state_dict(state_dict: Mapping[str, object], template):
  """The Flax tree shaped like ``template`` holding ``state_dict``'s values.

  Raises ValueError listing missing and unexpected keys, or naming the path and
  both shapes of a mismatch.
  """
  sd = {k: np.asarray(getattr(v, "detach", lambda: v)().cpu().numpy()
                      if hasattr(v, "cpu") else v)
        for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  flat, treedef = jax.tree_util.tree_flatten_with_path(template)
  keys = [(path_str(p), *_torch_key(path_str(p)), t) for p, t in flat]
  wanted = {k for _, k, _, _ in keys}
  missing = sorted(wanted - set(sd))
  unexpected = sorted(set(sd) - wanted)
  if missing or unexpected:
    raise ValueError("state_dict does not fit ResNet-18: "
                     + (f"missing keys: {', '.join(missing)}" if missing else "")
                     + ("; " if missing and unexpected else "")
                     + (f"unexpected keys: {', '.join(unexpected)}" if unexpected else ""))
  leaves = []
  for path, key, leaf, t in keys:
    value = _to_flax(sd[key], leaf)
    if tuple(value.shape) != tuple(t.shape):
      raise ValueError(f"state_dict['{key}'] has shape {tuple(sd[key].shape)} (as Flax "
                       f"{tuple(value.shape)}) but {path} needs {tuple(t.shape)}")
    leaves.append(np.array(value, np.float32))  # a copy: torch tensors share their memory
  return jax.tree_util.tree_unflatten(treedef, leaves)


def torchvision_state_dict(weights: str = "IMAGENET1K_V1") -> dict:
  """torchvision's ResNet-18 ``weights`` (downloaded on first use) as numpy arrays."""
  try:
    import torchvision
  except Exception as e:  # noqa: BLE001 - ImportError, or a torch/torchvision mismatch
    raise RuntimeError(f"model.weights='torchvision:{weights}' needs torchvision ({e}); "
                       f"install it with: {INSTALL}") from None
  try:
    model = torchvision.models.resnet18(weights=weights)
  except Exception as e:  # noqa: BLE001 - urllib/OSError without internet
    raise RuntimeError(f"could not download torchvision's ResNet-18 weights {weights!r} ({e}); "
                       f"they need internet once (then the torch hub cache), or use "
                       f"model.weights='checkpoint:DIR'") from None
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torchvision_encoder(weights: str, encoder_template) -> dict:
  """torchvision's ResNet-18 ``weights`` as this family's encoder tree, shaped like
  ``encoder_template`` (its ``fc`` classifier dropped)."""
  state_dict = torchvision_state_dict(weights)
  fc = state_dict["fc.weight"].shape
  full = {**encoder_template, "fc": {"kernel": np.zeros(fc[::-1], np.float32),
                                     "bias": np.zeros(fc[:1], np.float32)}}
  tree = convert_state_dict(state_dict, full)
  tree.pop("fc")
  return tree
