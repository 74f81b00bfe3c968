"""Trained classifiers on disk, and a pure ``predict`` that uses them later.

Every trained sweep cell saves its classifier with Orbax into
``WORKDIR/classifiers/<cell>/`` (``cell`` = ``budget<k>_<strategy>_seed<s>``)
with ``description.json``: the model config, the number of classes and their
names, and the preprocessing the images need (pixel maximum, shape, how a
different shape is brought to it). :func:`load_classifier` returns a
:class:`Classifier` whose ``predict(images)`` gives class probabilities.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from aetl_jax.core.files import atomic_write_text
from aetl_jax.data import preprocessing
from aetl_jax.engine import checkpoint
from aetl_jax.engine.launchers import is_main_process
from aetl_jax.evaluation.batched import batched_apply
from aetl_jax.models.ladder import LadderNetwork
from aetl_jax.models.registry import build_classifier
from aetl_jax.models.variables import tree_of, variables

DESCRIPTION = "description.json"
CELL_NAME = re.compile(r"[A-Za-z0-9_.=+-]+")

LADDER_FIELDS = ("widths", "num_classes", "noise_std", "combinator", "variant")

log = logging.getLogger(__name__)


def cell_name(budget: int, strategy: str, seed: int) -> str:
  return f"budget{budget}_{strategy}_seed{seed}"


TRAINING_ONLY = ("domain", "source_encoder", "source_head")


def save_classifier(directory, params, description: dict) -> None:
  """Orbax step 0 of ``{'params'}`` + ``description.json`` (written last, atomically; by
  process 0 of a multi-process run, after every process took part in the Orbax save)."""
  directory = Path(directory)
  if checkpoint.finished_steps(directory):  # a cell retrained because its row was lost
    shutil.rmtree(directory / "0")
    (directory / DESCRIPTION).unlink(missing_ok=True)
  manager = checkpoint.make_manager(directory, max_to_keep=1)
  checkpoint.save(manager, 0, {"params": params})
  manager.close()
  if not is_main_process():
    return
  atomic_write_text(directory / DESCRIPTION, json.dumps(description, indent=2, sort_keys=True))


def make_saver(workdir, config, *, input_shape, num_classes: int, label_names, preprocessing_: dict):
  """The ``save`` callback of the sweep: one folder per cell."""
  root = Path(workdir) / "classifiers"

  def save(budget, strategy, seed, model, params, result):
    # A domain classifier and ADDA's source network (adversarial adaptation) only served the
    # training; predicting does not need them.
    params = {k: v for k, v in params.items() if k not in TRAINING_ONLY}
    kind = "autoencoder_classifier" if "decoder" in params else "classifier"
    architecture = None
    if isinstance(model, LadderNetwork):  # a model of its own, not the pretrained encoder's
      kind, architecture = "ladder", {f: getattr(model, f) for f in LADDER_FIELDS}
    description = {
        "cell": cell_name(budget, strategy, seed), "strategy": strategy, "budget": budget,
        "seed": seed, "model": config.model.to_dict(), "objective": config.objective.name,
        "kind": kind, "num_classes": num_classes, "label_names": list(label_names),
        "input_shape": list(input_shape), "preprocessing": preprocessing_,
        "test_accuracy": result.get("test_accuracy"), "val_accuracy": result.get("val_accuracy")}
    if architecture is not None:
      description["architecture"] = architecture
    save_classifier(root / description["cell"], jax.device_get(params), description)

  return save


@dataclasses.dataclass
class Classifier:
  description: dict
  params: dict
  apply: Callable
  encode: Callable | None = None  # jitted (params, x) -> the encoder's features

  @property
  def input_shape(self) -> tuple:
    return tuple(self.description["input_shape"])

  def scale_inputs(self, images, max_value: float | None = None) -> np.ndarray:
    """Raw images ((N,H,W) or (N,H,W,C)) → the model's input in [0, 1].

    ``max_value`` is the pixel value that means white in ``images`` (255 for image files and
    IDX, see :func:`read_images`); without it, floats in [0, 1] are taken as they are and
    anything else is in the training data's own scale (its ``max_value``: 16 for sklearn's
    digits, 255 otherwise). Inputs that leave [0, 1] once scaled are named in a warning.
    """
    images = np.asarray(images)
    if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
      raise ValueError(f"images must be numbers, got dtype {images.dtype}")
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4:
      raise ValueError(f"images must be (N, H, W[, C]), got shape {images.shape}")
    p = self.description["preprocessing"]
    if max_value is None:
      in_unit = np.issubdtype(images.dtype, np.floating) and images.max(initial=0) <= 1.0
      max_value = 1.0 if in_unit else p["max_value"]
    images = preprocessing.to_unit(images, max_value)
    if not np.all(np.isfinite(images)):
      raise ValueError(f"images hold {int(np.sum(~np.isfinite(images)))} non-finite pixel(s)")
    low, high = float(images.min(initial=0)), float(images.max(initial=0))
    if low < -1e-6 or high > 1 + 1e-6:
      log.warning("predict: inputs span [%.3g, %.3g] after dividing by %g, outside the [0, 1] "
                  "the classifier was trained on; give the pixel scale (--max-value)", low, high,
                  max_value)
    if images.shape[1:] != self.input_shape:
      try:
        images = preprocessing.to_shape(images.astype(np.float32), self.input_shape, p["resize"])
      except ValueError as e:
        raise ValueError(f"images of shape {images.shape[1:]} do not fit the classifier's input "
                         f"{self.input_shape} ({e}); it was trained with resize={p['resize']!r}: "
                         f"give images of shape {self.input_shape}, or ones that "
                         f"{'pad' if p['resize'] == 'pad' else 'resize'} to it") from None
    return images.astype(np.float32)

  def predict(self, images, max_value: float | None = None) -> np.ndarray:
    """Class probabilities, (N, num_classes); ``max_value`` as in :meth:`scale_inputs`."""
    logits = batched_apply(self.apply, self.params, jnp.asarray(self.scale_inputs(images, max_value)))
    return np.asarray(jax.nn.softmax(logits, -1))

  def features(self, images) -> np.ndarray:
    """The (fine-tuned) encoder's features of ``images``, (N, d)."""
    z = np.asarray(batched_apply(self.encode, self.params, jnp.asarray(self.scale_inputs(images))))
    return z.reshape(len(z), -1)


def list_cells(workdir) -> list[str]:
  root = Path(workdir) / "classifiers"
  return sorted(p.name for p in root.iterdir() if (p / DESCRIPTION).exists()) if root.is_dir() else []


def best_cell(workdir) -> str:
  """The saved cell with the best validation accuracy (cells validated on no label are not
  candidates: choosing among them would need the test set)."""
  cells = list_cells(workdir)
  if not cells:
    raise ValueError(f"no saved classifier in {workdir}")
  scored = [(d.get("val_accuracy"), c) for c in cells
            for d in [json.loads((Path(workdir) / "classifiers" / c / DESCRIPTION).read_text())]]
  scored = [(v, c) for v, c in scored if v is not None]
  if not scored:
    raise ValueError(f"no saved classifier of {workdir} was validated on labels, so none can be "
                     f"chosen without the test set; name one with --cell ({', '.join(cells[:8])})")
  return max(scored)[1]


def load_classifier(workdir, cell: str) -> Classifier:
  """The classifier of ``cell`` saved in ``workdir`` (no torch, no TensorFlow needed)."""
  directory = Path(workdir) / "classifiers" / cell
  if not CELL_NAME.fullmatch(cell) or cell in (".", ".."):
    raise ValueError(f"--cell {cell[:100]!r} is not a cell name (budget<k>_<strategy>_seed<s>, "
                     f"letters, digits and _.=+- only; a name, not a path); saved: "
                     + (", ".join(list_cells(workdir)) or "none"))
  if not (directory / DESCRIPTION).exists():
    cells = list_cells(workdir)
    raise ValueError(f"no saved classifier {cell!r} in {workdir}; saved: "
                     + (", ".join(cells) if cells else "none (run with transfer.save_classifiers=True)"))
  description = json.loads((directory / DESCRIPTION).read_text())
  model = _model(description)
  template = jax.eval_shape(lambda: tree_of(model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, *description["input_shape"])),
      method="init_all" if description["kind"] in ("autoencoder_classifier", "ladder") else None)))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  # What the classifier needs of the saved tree (ADDA cells of earlier versions saved their
  # source network beside it).
  params = {name: checkpoint.restore_subtree(directory, part, subtree=("params", name), step=0)[1]
            for name, part in template.items()}
  apply = jax.jit(lambda params, x: model.apply(variables(params), x))
  encode = jax.jit(lambda params, x: model.apply(variables(params), x, method="encode"))
  return Classifier(description, params, apply, encode)


@dataclasses.dataclass
class Images:
  """Images read for prediction: the pixels, a name per image (file, or index), the class
  folder each came from (None when not read from class sub-folders) and the pixel value that
  means white (255 for image files and IDX; None: the array's own, see
  :meth:`Classifier.scale_inputs`)."""

  pixels: np.ndarray
  names: list
  folders: list | None = None
  max_value: float | None = None


IMAGE_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def _open_image(path: Path) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      return np.asarray(image)
  except (OSError, UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"{path}: not a readable image ({type(e).__name__}: "
                     f"{str(e)[:100] or 'empty file'})") from None


def _image_folder(path: Path) -> Images:
  """A folder of image files, or of class sub-folders of image files (the ``folder:``
  training layout)."""
  files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_FILES)
  classes = sorted(p for p in path.iterdir() if p.is_dir())
  folders = None
  if not files and classes:
    files = [f for c in classes for f in sorted(c.iterdir())
             if f.is_file() and f.suffix.lower() in IMAGE_FILES]
    folders = [f.parent.name for f in files]
  if not files:
    raise ValueError(f"{path}: no image files ({', '.join(IMAGE_FILES)}), class sub-folders of "
                     f"them, .npz or IDX images")
  pixels = [_open_image(f) for f in files]
  shapes = sorted({p.shape for p in pixels})
  if len(shapes) > 1:
    raise ValueError(f"{path}: the images have different shapes ({', '.join(map(str, shapes[:4]))}); "
                     f"give images of one size")
  return Images(np.stack(pixels), [f.relative_to(path).as_posix() for f in files], folders, 255.0)


def export_classifier(workdir, cell: str, out, *, overwrite: bool = False) -> Path:
  """Writes ``out/params.msgpack`` (the classifier's parameters, ``flax.serialization``) and
  ``out/model.json`` (its description: architecture, classes, preprocessing, parameter
  shapes), so it can be used with Flax alone; an existing folder is refused unless
  ``overwrite`` (and then only those two files are replaced)."""
  from flax import serialization
  from aetl_jax.core.rules import tree_paths
  clf = load_classifier(workdir, cell)
  out = Path(out)
  files = (out / "params.msgpack", out / "model.json")
  if any(f.exists() for f in files) and not overwrite:
    raise ValueError(f"--out {out} already holds an export; pass --overwrite to replace it")
  if out.exists() and not out.is_dir():
    raise ValueError(f"--out {out} is a file; name a folder")
  out.mkdir(parents=True, exist_ok=True)
  params = jax.tree.map(np.asarray, clf.params)
  description = {**clf.description, "format": "flax.serialization msgpack of the params tree",
                 "parameters": {p: list(np.shape(x)) for p, x in
                                zip(tree_paths(params), jax.tree.leaves(params))}}
  files[0].write_bytes(serialization.msgpack_serialize(params))
  atomic_write_text(files[1], json.dumps(description, indent=2, sort_keys=True))
  return out


def _model(description: dict):
  """The module a saved description names."""
  if description["kind"] == "ladder":
    a = description["architecture"]
    return LadderNetwork(**{**a, "widths": tuple(a["widths"])})
  m = ml_collections.ConfigDict(description["model"])
  kind = {"vae": "vae"}.get(description["objective"], "autoencoder")
  return build_classifier(m, description["num_classes"], kind,
                          decoder_shape=(tuple(description["input_shape"])
                                         if description["kind"] == "autoencoder_classifier" else None))


def read_images(path) -> Images:
  """Images from a folder of image files (or of class sub-folders), an .npz ('images'), or
  IDX (file or folder)."""
  path = Path(path)
  if not path.exists():
    raise ValueError(f"{path} does not exist")
  if path.is_file() and path.suffix == ".npz":
    try:
      with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
          raise ValueError(f"{path}: no 'images' array (it holds {', '.join(z.files)})")
        pixels = z["images"]
    except (OSError, EOFError, ValueError) as e:
      if str(e).startswith(str(path)):
        raise
      raise ValueError(f"{path}: not a readable .npz file with numeric arrays") from None
    return Images(pixels, [str(i) for i in range(len(pixels))])
  from aetl_jax.data.idx import read_idx
  if path.is_file() and "idx" in path.name:
    pixels = read_idx(path)
    return Images(pixels, [str(i) for i in range(len(pixels))], max_value=255.0)
  if path.is_dir():
    idx = sorted(p for p in path.iterdir() if "images-idx3" in p.name)
    if idx:
      pixels = read_idx(idx[0])
      return Images(pixels, [str(i) for i in range(len(pixels))], max_value=255.0)
    return _image_folder(path)
  if path.is_file() and path.suffix.lower() in IMAGE_FILES:
    return Images(_open_image(path)[None], [path.name], max_value=255.0)
  raise ValueError(f"{path}: give a folder of images (or of class sub-folders), an image file, "
                   f"an .npz with 'images', or an IDX file")
