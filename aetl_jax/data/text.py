"""Text datasets, tokenisation and the text transfer layout.

    tsv:FILE            one labelled split (``train``): LABEL<TAB>TEXT per line
    tsv:DIR             ``train.tsv`` and, when present, ``dev.tsv`` (or
                        ``validation.tsv``) and ``test.tsv``
    glue/sst2           TFDS catalogue (its test split is unlabelled: the
                        validation split is the test set here)
    imdb_reviews        TFDS catalogue (its ``unsupervised`` split joins the
                        unlabelled source)

A header row naming the columns (``label`` and one of ``sentence``,
``content``, ``text``, in either order) is recognised; without one the label
comes first. CRLF line ends are accepted. An empty line, a row without a label
or with a label that is not a class id, and bytes that are not UTF-8 are
errors naming the file and line.

Tokens come from a WordPiece vocabulary (Hugging Face ``tokenizers``) trained
on the *source* sentences only, so the target is encoded with the vocabulary
the encoder was pretrained with; it is saved beside the checkpoint. A
sequence is its token ids, an end token, then padding (id 0) to
``data.max_len``; longer ones are truncated and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from aetl_jax.core.files import atomic_write_text
from aetl_jax.data.splits import stratified_split, subsample
from aetl_jax.data.transfer_split import TransferData, TransferSplit

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]")  # ids 0..4 (models.sequence)
TEXT_COLUMNS = ("sentence", "content", "text")
TEXT_CATALOGUE = {"glue/sst2": "sentence", "imdb_reviews": "text"}
DEV_FILES = ("dev.tsv", "validation.tsv")


@dataclasses.dataclass
class TextDataset:
  name: str
  splits: dict  # split -> (list of str, labels int32)
  num_classes: int
  route: str
  unlabelled: list = dataclasses.field(default_factory=list)  # extra source sentences


def is_text(name: str) -> bool:
  return name.startswith("tsv:") or name in TEXT_CATALOGUE


def _decode(raw: bytes, path: Path, line: int) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                     f"{e.start + 1})") from None


def _columns(fields: list[str]):
  """(label column, text column) from a header row, or None when it is a data row."""
  names = [f.strip().lower() for f in fields]
  if "label" in names and any(n in TEXT_COLUMNS for n in names):
    return names.index("label"), next(i for i, n in enumerate(names) if n in TEXT_COLUMNS)
  return None


def _row(fields: list[str], label_col: int, text_col: int, width: int) -> tuple[str, str]:
  """(label, text) of one row. In a two-column file a tab inside the text stays in it."""
  if width == 2 and label_col == 0:
    return fields[0], "\t".join(fields[1:])
  if width == 2:
    return fields[-1], "\t".join(fields[:-1])
  return fields[label_col], fields[text_col]


def read_tsv(path) -> tuple[list[str], np.ndarray]:
  """(sentences, integer labels) of a LABEL<TAB>TEXT file; ValueError naming file:line."""
  path = Path(path)
  texts, labels = [], []
  label_col, text_col, width = 0, 1, 2
  lines = path.read_bytes().split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()  # the final newline
  for number, raw in enumerate(lines, 1):
    line = _decode(raw.rstrip(b"\r"), path, number)
    if not line.strip():
      raise ValueError(f"{path}:{number}: empty line (every line is LABEL<TAB>TEXT)")
    fields = line.split("\t")
    if number == 1 and (header := _columns(fields)) is not None:
      (label_col, text_col), width = header, len(fields)
      continue
    if len(fields) < 2:
      raise ValueError(f"{path}:{number}: a row needs a label and a text separated by a tab, "
                       f"got {line[:60]!r}")
    value, body = (part.strip() for part in _row(fields, label_col, text_col, width))
    if not value or not body:
      raise ValueError(f"{path}:{number}: a row needs a label and a text separated by a tab, "
                       f"got {line[:60]!r}")
    if not value.isdigit():
      raise ValueError(f"{path}:{number}: label {value[:100]!r}{'...' if len(value) > 100 else ''} "
                       f"is not a class id (0, 1, ...)")
    texts.append(body)
    labels.append(int(value))
  if not texts:
    raise ValueError(f"{path}: no labelled rows")
  return texts, np.asarray(labels, np.int32)


def _read_tsv_source(path: Path) -> dict:
  if path.is_file():
    return {"train": read_tsv(path)}
  if not (path / "train.tsv").is_file():
    raise ValueError(f"{path}: a tsv folder needs train.tsv (and optionally dev.tsv, test.tsv)")
  splits = {"train": read_tsv(path / "train.tsv")}
  dev = next((path / f for f in DEV_FILES if (path / f).is_file()), None)
  if dev is not None:
    splits["validation"] = read_tsv(dev)
  if (path / "test.tsv").is_file():
    splits["test"] = read_tsv(path / "test.tsv")
  return splits


def _check_labels(name: str, splits: dict) -> int:
  """Number of classes (from train); other splits may only use train's labels."""
  known = set(np.unique(splits["train"][1]).tolist())
  for split, (_, y) in splits.items():
    unknown = sorted(set(np.unique(y).tolist()) - known)
    if unknown:
      raise ValueError(f"{name}: split {split!r} has label(s) {unknown} that train does not have "
                       f"(train's labels: {sorted(known)})")
  return max(known) + 1


def _load_tfds_text(name: str, data_dir=None, progress: bool = True) -> TextDataset:
  import tensorflow_datasets as tfds
  if not progress:
    tfds.disable_progress_bar()
  builder = tfds.builder(name, data_dir=data_dir)
  builder.download_and_prepare()
  column = TEXT_CATALOGUE[name]

  def read(split):
    rows = tfds.as_numpy(builder.as_dataset(split=split))
    texts, labels = [], []
    for row in rows:
      texts.append(row[column].decode("utf-8"))
      labels.append(int(row["label"]))
    return texts, np.asarray(labels, np.int32)

  available = set(builder.info.splits)
  splits = {"train": read("train")}
  if name == "glue/sst2":  # GLUE's test labels are hidden (-1)
    splits["test"] = read("validation")
  elif "test" in available:
    splits["test"] = read("test")
  unlabelled = read("unsupervised")[0] if "unsupervised" in available else []
  return TextDataset(name, splits, builder.info.features["label"].num_classes,
                     f"tfds builder {builder.name} {builder.version}", unlabelled)


def load_text(name: str, *, data_dir=None, progress: bool = True) -> TextDataset:
  """A text dataset by name (see the module docstring)."""
  if name in TEXT_CATALOGUE:
    return _load_tfds_text(name, data_dir, progress)
  path = Path(name.split(":", 1)[1]).expanduser()
  if not path.exists():
    raise ValueError(f"dataset {name!r}: {path} does not exist")
  splits = _read_tsv_source(path)
  return TextDataset(name, splits, _check_labels(name, splits), f"local tsv {path}")


# --- tokenisation -------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size: int):
  """A lower-casing WordPiece tokenizer with at most ``vocab_size`` entries (the special
  tokens first), trained on ``texts``."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  trainer = trainers.WordPieceTrainer(vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS),
                                      show_progress=False)
  tok.train_from_iterator(list(texts), trainer)
  return tok


def tokenizer_from_json(text: str):
  from tokenizers import Tokenizer
  return Tokenizer.from_str(text)


def encode(tok, texts, max_len: int) -> tuple[np.ndarray, int]:
  """(ids int32 (N, max_len): tokens, the end token, padding; number truncated)."""
  if max_len < 2:
    raise ValueError(f"data.max_len must be >= 2 (a token and the end token), got {max_len}")
  eos = tok.token_to_id("[EOS]")
  ids = np.zeros((len(texts), max_len), np.int32)
  truncated = 0
  for i, enc in enumerate(tok.encode_batch(list(texts))):
    seq = enc.ids
    if len(seq) > max_len - 1:
      truncated += 1
      seq = seq[: max_len - 1]
    ids[i, : len(seq)] = seq
    ids[i, len(seq)] = eos
  return ids, truncated


def decode(tok, ids) -> list[str]:
  """Token ids (padding and the end token dropped) back to text."""
  eos = tok.token_to_id("[EOS]")
  out = []
  for row in np.asarray(ids):
    row = [int(t) for t in row if t != 0]
    if eos in row:
      row = row[: row.index(eos)]
    out.append(tok.decode(row))
  return out


# --- the transfer layout ------------------------------------------------------------------


def _cap(texts, labels, limit: int, seed: int):
  """At most ``limit`` sentences (0: all), a seeded random subset in the original order."""
  keep = subsample(len(texts), limit, seed)
  return [texts[i] for i in keep], None if labels is None else np.asarray(labels)[keep]


def build_text_transfer_data(d, vocab_size: int, *, progress: bool = True) -> TransferData:
  """Source sentences (unlabelled), a labelled target pool, a fixed validation split when the
  target has one, and the test set, as token ids; ``d`` is ``config.data``."""
  if not is_text(d.source):
    raise ValueError(f"a text target ({d.target}) needs a text source, got {d.source!r}")
  target = load_text(d.target, data_dir=d.data_dir or None, progress=progress)
  source = target if d.source == d.target else load_text(d.source, data_dir=d.data_dir or None,
                                                           progress=progress)
  pool_x, pool_y = target.splits["train"]
  if "test" in target.splits:
    test_x, test_y = target.splits["test"]
  else:
    keep, test = stratified_split(pool_y, d.test_fraction, d.split_seed)
    test_x, test_y = [pool_x[i] for i in test], pool_y[test]
    pool_x, pool_y = [pool_x[i] for i in keep], pool_y[keep]
  val_x, val_y = target.splits.get("validation", ([], np.zeros(0, np.int32)))
  source_labels = None
  if d.source == d.target and d.source_fraction == 0:  # the source is the pool's sentences
    source_x, source_labels = list(pool_x), pool_y
  elif d.source == d.target:
    pool_rel, source_rel = stratified_split(pool_y, d.source_fraction, d.split_seed + 1)
    source_x, source_labels = [pool_x[i] for i in source_rel], pool_y[source_rel]
    pool_x, pool_y = [pool_x[i] for i in pool_rel], pool_y[pool_rel]
  else:
    source_x = list(source.splits["train"][0])
  if source.unlabelled:  # e.g. IMDB's unsupervised reviews: the source is not all labelled
    source_x, source_labels = source_x + list(source.unlabelled), None
  source_x, source_labels = _cap(source_x, source_labels, d.max_source, d.split_seed + 3)
  pool_x, pool_y = _cap(pool_x, pool_y, d.max_pool, d.split_seed + 4)
  test_x, test_y = _cap(test_x, test_y, d.max_test, d.split_seed + 2)
  n_pool, n_test = len(pool_y), len(test_y)
  labels = np.concatenate([pool_y, test_y, val_y]).astype(np.int32)
  split = TransferSplit(source=np.empty(0, np.int64), target_pool=np.arange(n_pool),
                        test=np.arange(n_pool, n_pool + n_test),
                        val=np.arange(n_pool + n_test, len(labels)) if len(val_y) else None)
  description = {"source_dataset": {"name": d.source, "route": source.route},
                 "target_dataset": {"name": d.target, "route": target.route}}
  shared = d.source == d.target and source_labels is not None
  data = TransferData(None, None, labels, split, target.num_classes, description,
                      source_labels=None if source_labels is None else np.asarray(source_labels, np.int32),
                      source_classes=() if source_labels is None else tuple(
                          int(c) for c in np.unique(source_labels)),
                      target_classes=tuple(range(target.num_classes)), shared_labels=shared,
                      texts={"source": source_x, "target": list(pool_x) + list(test_x) + list(val_x)})
  return with_tokenizer(data, train_tokenizer(source_x, vocab_size), d.max_len)


def with_tokenizer(data: TransferData, tok, max_len: int) -> TransferData:
  """``data`` with its sentences (``data.texts``) encoded by ``tok``: the source as
  ``source_images``, the target rows as ``images``. A resumed run re-encodes with the
  tokenizer saved beside its checkpoint (training one is not reproducible bit for bit)."""
  source, n_source = encode(tok, data.texts["source"], max_len)
  target, n_target = encode(tok, data.texts["target"], max_len)
  for name, n, total in (("source", n_source, len(source)), ("target", n_target, len(target))):
    if n:
      log.warning("data: %d of %d %s sentences are longer than data.max_len=%d tokens and were "
                  "truncated", n, total, name, max_len)
  description = {**data.description,
                 "text": {"vocab_size": tok.get_vocab_size(), "max_len": int(max_len),
                          "truncated": {"source": n_source, "target": n_target},
                          "validation": "fixed split" if data.split.val is not None
                          else "drawn from the pool"}}
  return dataclasses.replace(data, source_images=source, images=target, tokenizer=tok,
                             description=description)


def tokenizer_json(tok) -> str:
  """The tokenizer as canonical JSON (what is saved and compared with the checkpoint's)."""
  return json.dumps(json.loads(tok.to_str()), sort_keys=True)


def vocabulary_hash(tok) -> str:
  return hashlib.sha256(tokenizer_json(tok).encode()).hexdigest()[:16]


def saved_tokenizer(directory, tok):
  """The tokenizer of a run: the one saved as ``directory/tokenizer.json`` (beside the
  pretraining checkpoint) when there is one, else ``tok``, saved there atomically."""
  path = Path(directory) / "tokenizer.json"
  if path.exists():
    try:
      return tokenizer_from_json(path.read_text())
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
      raise ValueError(f"{path}: not a readable tokenizer ({e}); it is the vocabulary of the "
                       f"checkpoint beside it") from None
  path.parent.mkdir(parents=True, exist_ok=True)
  atomic_write_text(path, tokenizer_json(tok))  # several processes may save it
  return tok


def check_vocabulary(sidecar: dict | None, tok, model_vocab_size: int) -> None:
  """ValueError when ``tok`` is not the vocabulary the checkpoint (its ``sidecar``) was
  trained with, or does not fit the model's embedding table."""
  if tok.get_vocab_size() > model_vocab_size:
    raise ValueError(f"the vocabulary has {tok.get_vocab_size()} tokens but model.vocab_size is "
                     f"{model_vocab_size}")
  saved = (sidecar or {}).get("vocabulary")
  if saved is not None and saved != vocabulary_hash(tok):
    raise ValueError(f"the checkpoint's encoder was trained with vocabulary {saved}, but the "
                     f"tokenizer here is {vocabulary_hash(tok)}; the token ids would mean other "
                     f"words (restore the tokenizer.json saved with the checkpoint)")


def export_embeddings(directory, tok, embedding) -> tuple[Path, Path]:
  """The learned word embeddings as ``embeddings.npy`` (vocab × dim) and ``vocab.txt`` (one
  token per line, row order)."""
  directory = Path(directory)
  vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
  np.save(directory / "embeddings.npy", np.asarray(embedding)[: len(vocab)])
  (directory / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in vocab))
  return directory / "embeddings.npy", directory / "vocab.txt"
