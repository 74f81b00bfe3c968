"""Text: tsv reading, tokenisation, the recurrent sequence autoencoder, length-bucketed
epochs, and the transfer task on sentences (issue: sequence autoencoders for text)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aetl_jax import api
from aetl_jax.core.config import ConfigError
from aetl_jax.data import text
from aetl_jax.engine import checkpoint
from aetl_jax.engine.loop import _plan, _token_lengths
from aetl_jax.models.registry import build_model
from aetl_jax.models.sequence import EOS, MASK, PAD, masked_mean
from aetl_jax.objectives.sequences import mask_tokens, token_loss
from aetl_jax.tasks.transfer import default_config
from tests.conftest import quick_jit

POSITIVE = ["good", "great", "lovely", "fine", "superb", "warm", "funny", "smart"]
NEGATIVE = ["bad", "awful", "dull", "poor", "weak", "cold", "boring", "dumb"]
FILLER = ["the", "film", "is", "a", "story", "with", "acting", "and", "plot", "very", "it"]


def corpus(n: int, seed: int):
  """Sentences whose label is carried by their sentiment words (lengths 3..14)."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = int(rng.integers(2))
    words = list(rng.choice(FILLER, int(rng.integers(2, 12))))
    for _ in range(int(rng.integers(1, 3))):
      words.insert(int(rng.integers(len(words) + 1)), rng.choice(POSITIVE if label else NEGATIVE))
    rows.append((label, " ".join(words)))
  return rows


def write_tsv(path, rows, header="label\tsentence", newline="\n"):
  lines = ([header] if header else []) + [f"{y}\t{t}" for y, t in rows]
  path.write_bytes((newline.join(lines) + newline).encode())
  return path


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
  root = tmp_path_factory.mktemp("sentiment")
  write_tsv(root / "train.tsv", corpus(400, 0), newline="\r\n")
  write_tsv(root / "dev.tsv", corpus(40, 1))
  write_tsv(root / "test.tsv", corpus(80, 2), header="sentence\tlabel")  # columns either way
  # (the header names the columns: write test's rows in that order)
  (root / "test.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for y, t in corpus(80, 2)))
  return root


# --- reading ----------------------------------------------------------------------------------


def test_tsv_reads_headers_in_either_order_and_crlf(tiny_text):
  texts, labels = text.read_tsv(tiny_text / "train.tsv")
  expected = corpus(400, 0)
  assert texts == [t for _, t in expected] and labels.tolist() == [y for y, _ in expected]
  texts, labels = text.read_tsv(tiny_text / "test.tsv")
  assert texts[0] == corpus(80, 2)[0][1] and labels[0] == corpus(80, 2)[0][0]
  ds = text.load_text(f"tsv:{tiny_text}")
  assert set(ds.splits) == {"train", "validation", "test"} and ds.num_classes == 2


@pytest.mark.parametrize("content, message", [
    (b"label\tsentence\n0\tfine\n\n1\tgood\n", r"bad.tsv:3: empty line"),
    (b"0\tfine\n1\n", r"bad.tsv:2: a row needs a label and a text"),
    (b"0\tfine\npos\tgood\n", r"bad.tsv:2: label 'pos' is not a class id"),
    (b"0\tfine\n1\tcr\xe8me\n", r"bad.tsv:2: not UTF-8 \(byte 0xe8 at column 5\)"),
])
def test_bad_tsv_rows_name_the_file_and_line(tmp_path, content, message):
  (tmp_path / "bad.tsv").write_bytes(content)
  with pytest.raises(ValueError, match=message):
    text.read_tsv(tmp_path / "bad.tsv")


def test_a_split_with_a_label_train_lacks_is_refused(tmp_path):
  write_tsv(tmp_path / "train.tsv", [(0, "a"), (1, "b")])
  write_tsv(tmp_path / "test.tsv", [(0, "a"), (2, "c")])
  with pytest.raises(ValueError, match=r"split 'test' has label\(s\) \[2\].*train's labels: \[0, 1\]"):
    text.load_text(f"tsv:{tmp_path}")


# --- tokenisation -----------------------------------------------------------------------------


def test_tokenizer_round_trip_end_token_padding_and_truncation():
  sentences = [t for _, t in corpus(200, 3)]
  tok = text.train_tokenizer(sentences, 200)
  assert [tok.token_to_id(s) for s in text.SPECIAL_TOKENS] == [PAD, 1, 2, EOS, MASK]
  ids, truncated = text.encode(tok, sentences[:20] + ["Good FILM", "good ☂"], max_len=16)
  assert ids.dtype == np.int32 and ids.shape == (22, 16) and truncated == 0
  assert text.decode(tok, ids[:20]) == sentences[:20]  # lower-case, pre-tokenised text
  assert text.decode(tok, ids[20:21]) == ["good film"]  # normalised to lower case
  assert ids[21, 1] == tok.token_to_id("[UNK]")  # a character never seen in the source
  for row, s in zip(ids[:20], sentences):
    n = len(tok.encode(s).ids)
    assert row[n] == EOS and not row[:n].tolist().count(PAD) and not row[n + 1:].any()
  long = " ".join(["film"] * 40)
  ids, truncated = text.encode(tok, [long, "good"], max_len=8)
  assert truncated == 1 and ids[0, -1] == EOS and (ids[0, :-1] == tok.token_to_id("film")).all()
  with pytest.raises(ValueError, match="max_len must be >= 2"):
    text.encode(tok, ["good"], max_len=1)


# --- the model and its loss -------------------------------------------------------------------


def seq_model(chunk=4, cell="lstm", vocab=40):
  m = ml_collections.ConfigDict(dict(family="rnn", vocab_size=vocab, embed_dim=16, hidden=24,
                                     cell=cell, code_dim=0, dropout_rate=0.0, chunk=chunk,
                                     tie_output=True))
  return build_model(m, (12,), "seq_autoencoder")


def random_tokens(n, max_len, seed=0, vocab=40):
  rng = np.random.default_rng(seed)
  ids = np.zeros((n, max_len), np.int32)
  for i in range(n):
    k = int(rng.integers(1, max_len - 1))
    ids[i, :k] = rng.integers(MASK + 1, vocab, k)
    ids[i, k] = EOS
  return ids


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padding_never_counts_and_skipped_chunks_change_nothing(cell):
  ids = random_tokens(8, 12)
  model = seq_model(4, cell)
  params = model.init(jax.random.PRNGKey(0), ids[:1], method="reconstruct")["params"]
  loss = token_loss(model)
  value_grad = quick_jit(jax.value_and_grad(lambda p, x: loss(p, {"images": {"image": x}},
                                                              jax.random.PRNGKey(1))[0]))
  base, grads = value_grad(params, ids)
  # More padding (another chunk wholly past every sequence) gives the same loss and gradient.
  padded, grads_padded = value_grad(params, np.pad(ids, ((0, 0), (0, 9))))
  np.testing.assert_allclose(padded, base, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads,
               grads_padded)
  # The loss is the mean over non-padding tokens: an independent computation from the logits.
  logits = model.apply({"params": params}, ids, method="reconstruct")
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), ids[..., None], -1)[..., 0]
  mask = ids != PAD
  np.testing.assert_allclose(base, float(jnp.sum(nll * mask) / mask.sum()), rtol=1e-5)
  # No gating (one chunk of the whole length) computes the same function.
  ungated = seq_model(12, cell)
  np.testing.assert_allclose(ungated.apply({"params": params}, ids, method="reconstruct"), logits,
                             rtol=1e-5, atol=1e-6)


def test_masked_mean_ignores_pad_positions():
  tokens = np.array([[5, 6, EOS, PAD], [7, EOS, PAD, PAD]])
  values = np.array([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
  assert float(masked_mean(values, tokens)) == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)


def test_word_masking_touches_only_words_at_the_given_rate():
  ids = random_tokens(400, 30, seed=4)
  masked = np.asarray(mask_tokens(jnp.asarray(ids), jax.random.PRNGKey(0), 0.25))
  words = (ids != PAD) & (ids != EOS)
  assert (masked[~words] == ids[~words]).all()
  rate = (masked[words] == MASK).mean()
  assert 0.22 < rate < 0.28


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["seq_reconstruction", "seq_denoising"])
def test_sequence_autoencoder_overfits_a_few_sentences(objective):
  ids = random_tokens(6, 12, seed=5)
  model = seq_model(4)
  params = model.init(jax.random.PRNGKey(0), ids[:1], method="reconstruct")["params"]
  o = ml_collections.ConfigDict({"name": objective, "corruption_level": 0.1})
  from aetl_jax.objectives.registry import make_objective
  loss = make_objective(model, o)
  tx = optax.adam(1e-2)

  @quick_jit
  def step(p, s, r):
    (l, aux), g = jax.value_and_grad(loss, has_aux=True)(p, {"images": {"image": ids}}, r)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, l, aux

  s, first = tx.init(params), None
  for i in range(300):
    params, s, l, aux = step(params, s, jax.random.PRNGKey(i))
    first = l if first is None else first
  assert float(l) < 0.1 * float(first)
  clean = token_loss(model)(params, {"images": {"image": ids}}, jax.random.PRNGKey(0))[1]
  assert float(clean["token_accuracy"]) > 0.95


@pytest.mark.slow
def test_token_epochs_batch_sentences_of_similar_length():
  ids = random_tokens(2048, 40, seed=6)
  lengths = _token_lengths({"image": jnp.asarray(ids)})
  np.testing.assert_array_equal(lengths, (ids != 0).sum(1))
  assert _token_lengths({"image": jnp.zeros((4, 8, 8, 1))}) is None  # images: plain shuffle
  (idx,), _ = _plan(jax.random.PRNGKey(0), (2048,), (32,), lengths)
  idx = np.asarray(idx)
  assert idx.shape == (64, 32) and len(np.unique(idx)) == 2048  # a permutation, cut
  spread = np.ptp(np.asarray(lengths)[idx], axis=1).mean()
  (plain,), _ = _plan(jax.random.PRNGKey(0), (2048,), (32,))
  plain_spread = np.ptp(np.asarray(lengths)[np.asarray(plain)], axis=1).mean()
  assert spread < 0.25 * plain_spread
  # Batches are shuffled, not sorted: the longest batch is not always last.
  maxima = np.asarray(lengths)[idx].max(1)
  assert not (np.diff(maxima) >= 0).all()


# --- the transfer task on sentences -------------------------------------------------------------

TINY_TEXT = ["model.family='rnn'", "model.vocab_size=200", "model.embed_dim=16", "model.hidden=32",
             "objective.name='seq_denoising'", "data.max_len=16", "pretrain.epochs=4",
             "pretrain.batch_size=32", "pretrain.eval_every=2", "transfer.epochs=15",
             "transfer.learning_rate=1e-2",
             "transfer.budgets=(40,)", "transfer.seeds=2", "transfer.batch_size=16",
             "transfer.strategies=('scratch','linear_probe','finetune','lp_ft','partial')",
             "data.source_fraction=0", "transfer.min_steps=0", "transfer.probe_steps=0"]


def text_config(root, *extra):
  return api.load_config(default_config(), TINY_TEXT + [f"data.source='tsv:{root}'",
                                                        f"data.target='tsv:{root}'", *extra])


@pytest.fixture(scope="module")
def text_run(tiny_text, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("text_run") / "run"
  out = api.run(text_config(tiny_text), workdir, progress=False)
  return workdir, out


@pytest.mark.slow
def test_text_transfer_runs_every_strategy_and_saves_the_vocabulary(text_run):
  workdir, out = text_run
  rows = out["rows"]
  assert {(r["strategy"], r["budget"]) for r in rows} == {
      (s, 40) for s in ("scratch", "linear_probe", "finetune", "lp_ft", "partial")}
  # Each recorded accuracy, recomputed from the saved classifier (read by Orbax alone) on the
  # test sentences encoded with the saved vocabulary.
  import orbax.checkpoint as ocp
  from aetl_jax.data.domains import build_transfer_data
  from aetl_jax.transfer.encoder import target_model
  config = text_config(Path(json.loads((workdir / "config.json").read_text())["config"]["data"]
                            ["source"].removeprefix("tsv:")))
  tok = text.tokenizer_from_json((workdir / "pretrain" / "tokenizer.json").read_text())
  data = text.with_tokenizer(build_transfer_data(config.data, progress=False), tok, 16)
  x, y = data.images[data.split.test], data.labels[data.split.test]
  model = target_model(config, 2, "classifier", (16,))
  for r in rows:
    saved = ocp.PyTreeCheckpointer().restore(
        (workdir / "classifiers" / f"budget40_{r['strategy']}_seed{r['seed']}" / "0" / "default")
        .absolute())
    logits = model.apply({"params": saved["params"]}, jnp.asarray(x))
    assert float(np.mean(np.asarray(np.argmax(logits, -1)) == y)) == pytest.approx(
        r["test_accuracy"], abs=1e-9)
  # The sentiment words decide the label: 40 labels per class fine-tuned beat chance clearly.
  finetuned = [r["test_accuracy"] for r in rows if r["strategy"] == "finetune" and r["budget"] == 40]
  assert np.mean(finetuned) > 0.7
  described = json.loads((workdir / "data.json").read_text())
  assert described["val"]["size"] == 40 and described["test"]["size"] == 80  # dev.tsv, test.tsv
  assert described["text"]["validation"] == "fixed split"
  assert {"token_accuracy", "perplexity"} <= set(out["reconstruction"])
  logged = [json.loads(line) for line in (workdir / "metrics" / "pretrain.jsonl").open()]
  assert [r["epoch"] for r in logged if "eval_token_accuracy" in r] == [1, 3]  # eval_every=2
  vocab = (workdir / "pretrain" / "vocab.txt").read_text().splitlines()
  table = np.load(workdir / "pretrain" / "embeddings.npy")
  assert table.shape == (len(vocab), 16) and vocab[:5] == list(text.SPECIAL_TOKENS)
  sidecar = checkpoint.read_sidecar(workdir / "pretrain" / "checkpoints")
  import hashlib  # the checkpoint names the saved vocabulary file's bytes
  saved_bytes = (workdir / "pretrain" / "tokenizer.json").read_bytes()
  assert sidecar["vocabulary"] == hashlib.sha256(saved_bytes).hexdigest()[:16]
  assert [tok.id_to_token(i) for i in range(len(vocab))] == vocab


@pytest.mark.slow
def test_text_encoder_transplants_from_the_checkpoint(text_run, tiny_text):
  from aetl_jax.transfer.encoder import load_encoder, target_model
  workdir, _ = text_run
  config = text_config(tiny_text)
  model = target_model(config, 2, "classifier", (16,))
  template = model.init(jax.random.PRNGKey(5), jnp.zeros((1, 16)))["params"]
  assert set(template) == {"encoder", "head"}
  ckpt = workdir / "pretrain" / "checkpoints"
  _, encoder, _ = load_encoder(config, ckpt, template)
  # the whole saved state read back by Orbax alone (not by the transplant under test)
  import orbax.checkpoint as ocp
  step = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
  saved = ocp.PyTreeCheckpointer().restore((ckpt / str(step) / "default").absolute())
  saved = saved["params"]["encoder"]
  jax.tree.map(np.testing.assert_array_equal, encoder, saved)
  assert not np.allclose(encoder["block_0"]["embedding"], template["encoder"]["block_0"]["embedding"])
  # The classifier encodes with the pretrained encoder: same features as the autoencoder's.
  from aetl_jax.tasks.pretrain import pretrain_model
  autoencoder = pretrain_model(config, (16,))
  ids = np.asarray(text.encode(tok := text.tokenizer_from_json(
      (workdir / "pretrain" / "tokenizer.json").read_text()), ["good film", "bad plot"], 16)[0])
  del tok
  np.testing.assert_allclose(
      model.apply({"params": {**template, "encoder": encoder}}, ids, method="encode"),
      autoencoder.apply({"params": {"encoder": saved}}, ids, method="encode"), rtol=1e-6)


@pytest.mark.slow
def test_a_rerun_resumes_with_the_saved_vocabulary_and_a_foreign_one_is_refused(text_run, tiny_text):
  workdir, first = text_run
  again = api.run(text_config(tiny_text), workdir, progress=False)  # a fresh tokenizer is trained...
  assert again["rows"] == first["rows"]  # ...but the saved one encodes: nothing retrains
  other = text.train_tokenizer(["an entirely different corpus of words"] * 3, 200)
  saved = workdir / "pretrain" / "tokenizer.json"
  original = saved.read_text()
  try:
    saved.write_text(text.tokenizer_json(other))
    with pytest.raises(ConfigError, match="checkpoint's encoder was trained with vocabulary"):
      api.run(text_config(tiny_text), workdir, progress=False)
  finally:
    saved.write_text(original)


def test_an_image_family_on_text_is_refused_with_a_hint(tiny_text, tmp_path):
  config = api.load_config(default_config(), [f"data.source='tsv:{tiny_text}'",
                                              f"data.target='tsv:{tiny_text}'", "data.max_len=16"])
  with pytest.raises(ConfigError, match=r"config key 'model'.*\(16,\).*use model.family='rnn'"):
    api.run(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("extra, message", [
    (["objective.name='reconstruction'"], r"'seq_reconstruction' or 'seq_denoising'"),
    (["transfer.augment=(('translate', 2),)"], r"transfer.augment.*text"),
    (["model.vocab_size=3"], r"vocab_size must exceed the 5 special tokens"),
])
def test_text_configs_that_cannot_work_fail_in_one_line(tiny_text, tmp_path, extra, message):
  with pytest.raises(ConfigError, match=message):
    api.run(text_config(tiny_text, *extra), tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()


def test_an_rnn_on_images_and_a_text_source_for_an_image_target_are_refused(tiny_text, tmp_path):
  with pytest.raises(ConfigError, match=r"family 'rnn' reads token ids"):
    api.run(api.load_config(default_config(), ["model.family='rnn'",
                                               "objective.name='seq_reconstruction'"]),
            tmp_path / "a", progress=False)
  with pytest.raises(ConfigError, match=r"a text source .* needs a text target"):
    api.run(api.load_config(default_config(), [f"data.source='tsv:{tiny_text}'"]),
            tmp_path / "b", progress=False)


@pytest.mark.slow
def test_tfds_text_datasets_load_through_their_real_builders():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=24):
    ds = text.load_text("glue/sst2", progress=False)
  # GLUE hides SST-2's test labels: its validation split is the test set here.
  assert set(ds.splits) == {"train", "test"} and ds.num_classes == 2
  assert len(ds.splits["train"][0]) == 24 and all(isinstance(t, str) for t in ds.splits["train"][0])
  assert set(np.unique(ds.splits["test"][1])) <= {0, 1}


def test_a_tab_inside_the_text_stays_in_it(tmp_path):
  (tmp_path / "a.tsv").write_text("0\tone\ttwo\n1\tthree\n")
  (tmp_path / "b.tsv").write_text("sentence\tlabel\none\ttwo\t0\nthree\t1\n")
  for name in ("a.tsv", "b.tsv"):
    texts, labels = text.read_tsv(tmp_path / name)
    assert texts == ["one\ttwo", "three"] and labels.tolist() == [0, 1]


def test_text_splits_follow_the_files_and_the_caps(tmp_path):
  """build_text_transfer_data's rows, checked against the files: a target without test.tsv
  is split stratified (the test rows are sentences of train.tsv, every class in them); a
  dev.tsv becomes the validation rows; a different source keeps no labels; max_source caps
  the source; the split's indices are integer arrays that cover pool, test, validation."""
  from aetl_jax.data.text import build_text_transfer_data

  one = tmp_path / "one"
  one.mkdir()
  rows = corpus(200, 3)
  write_tsv(one / "train.tsv", rows)
  write_tsv(one / "dev.tsv", corpus(30, 4))
  other = tmp_path / "other.tsv"
  write_tsv(other, corpus(50, 5))
  d = ml_collections.ConfigDict(dict(source=f"tsv:{other}", target=f"tsv:{one}", data_dir="",
                                     test_fraction=0.25, split_seed=0, source_fraction=0.5,
                                     max_source=7, max_pool=0, max_test=0, max_len=32))
  data = build_text_transfer_data(d, vocab_size=200, progress=False)
  split, texts = data.split, data.texts["target"]
  n_pool, n_test, n_val = len(split.target_pool), len(split.test), len(split.val)
  assert n_val == 30 and n_test == 50 and n_pool == 150
  for idx in (split.source, split.target_pool, split.test, split.val):
    assert np.asarray(idx).dtype.kind == "i"
  assert np.array_equal(np.concatenate([split.target_pool, split.test, split.val]),
                        np.arange(len(texts)))
  by_text = dict((t, y) for y, t in rows)
  test_texts = [texts[i] for i in split.test]
  assert set(test_texts) <= set(by_text) and set(test_texts).isdisjoint(texts[i] for i in split.target_pool)
  assert [int(data.labels[i]) for i in split.test] == [by_text[t] for t in test_texts]
  assert set(data.labels[split.test].tolist()) == {0, 1}
  assert [texts[i] for i in split.val] == [t for _, t in corpus(30, 4)]
  assert data.source_labels is None and data.source_classes == ()
  assert len(data.texts["source"]) == 7 and set(data.texts["source"]) <= {t for _, t in corpus(50, 5)}
  assert data.description["target_dataset"] == {"name": f"tsv:{one}", "route": f"local tsv {one}"}
  assert data.description["text"] == {"vocab_size": data.tokenizer.get_vocab_size(), "max_len": 32,
                                      "truncated": {"source": 0, "target": 0},
                                      "validation": "fixed split"}


def test_encode_truncates_only_sentences_longer_than_max_len_minus_the_end_token():
  """A sentence of exactly max_len - 1 tokens fits beside the end token; one more is cut and
  counted."""
  tok = text.train_tokenizer([" ".join(["good"] * 8), "bad"], 50)
  for words, cut in ((4, 0), (5, 1)):
    ids, truncated = text.encode(tok, [" ".join(["good"] * words)], max_len=5)
    assert truncated == cut
    assert ids[0].tolist()[:4] == [tok.token_to_id("good")] * 4
    assert ids[0, 4] == tok.token_to_id("[EOS]")
  assert text.decode(tok, text.encode(tok, ["good bad"], 8)[0]) == ["good bad"]


def test_lstm_scan_equals_autodiff_of_the_plain_scan_values_and_gradients():
  from aetl_jax.models.kernels import lstm_gates, lstm_scan

  def plain(carry, x_gates, w_h):
    def step(carry, xg):
      h, c = carry
      acts, c, tc = lstm_gates(c, xg + h @ w_h)
      h = acts[..., 3 * h.shape[-1]:] * tc
      return (h, c), h
    return jax.lax.scan(step, carry, x_gates)

  t, b, hidden = 5, 3, 4
  keys = jax.random.split(jax.random.PRNGKey(0), 7)
  carry = (0.5 * jax.random.normal(keys[0], (b, hidden)), jax.random.normal(keys[1], (b, hidden)))
  x_gates = jax.random.normal(keys[2], (t, b, 4 * hidden))
  w_h = 0.5 * jax.random.normal(keys[3], (hidden, 4 * hidden))
  ref, ref_vjp = jax.vjp(plain, carry, x_gates, w_h)
  out, out_vjp = jax.vjp(lstm_scan, carry, x_gates, w_h)
  for a, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-6)
  # cotangents on every output: the final (h, c) and every step's h
  cot = ((jax.random.normal(keys[4], (b, hidden)), jax.random.normal(keys[5], (b, hidden))),
         jax.random.normal(keys[6], (t, b, hidden)))
  for a, r in zip(jax.tree.leaves(out_vjp(cot)), jax.tree.leaves(ref_vjp(cot))):
    np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def test_the_decoders_token_loss_and_accuracy_are_log_softmax_and_argmax_of_its_logits():
  """The training readout takes each token's negative log-likelihood and whether it is the top
  prediction from one max over the vocabulary: the same numbers as log-softmax and argmax of
  the decoder's teacher-forced logits."""
  from aetl_jax.models.sequence import RNNDecoder
  decoder = RNNDecoder(vocab_size=50, embed_dim=8, hidden=16, chunk=4)
  code = jax.random.normal(jax.random.PRNGKey(0), (6, 16))
  targets = jnp.asarray(random_tokens(6, 10, seed=3, vocab=50)).at[0, :].set(7)  # one full row
  variables = decoder.init(jax.random.PRNGKey(1), code, targets)
  bias = variables["params"]["out_bias"].at[7].set(8.0)  # token 7 the top prediction, mostly
  variables = {"params": {**variables["params"], "out_bias": bias}}
  nll, correct = decoder.apply(variables, code, targets)
  logits = decoder.apply(variables, code, targets, logits=True)
  want = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(correct, (jnp.argmax(logits, -1) == targets).astype(jnp.float32))
  assert 0 < float(correct.mean()) < 1  # both right and wrong tokens are checked


def test_linear_cross_entropy_equals_autodiff_of_the_plain_expression():
  """The fused readout loss: the same value, correct flags and gradients (x, w, b and the
  weights) as autodiff of log-softmax over ``x wᵀ + b``."""
  from aetl_jax.models.kernels import linear_cross_entropy
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  x = jax.random.normal(keys[0], (3, 5, 8))
  w = jax.random.normal(keys[1], (40, 8))
  b = jax.random.normal(keys[2], (40,))
  targets = jax.random.randint(keys[3], (3, 5), 0, 40).at[0, 0].set(0)
  b = b.at[0].set(20.0)  # target 0 is the top logit at [0, 0]: both outcomes are checked
  weights = jax.random.uniform(keys[4], (3, 5))

  def plain(x, w, b, weights):
    logp = jax.nn.log_softmax(x @ w.T + b)
    nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return jnp.sum(weights * nll), (jnp.argmax(logp, -1) == targets).astype(jnp.float32)

  fused = lambda x, w, b, weights: linear_cross_entropy(x, w, b, targets, weights)
  (loss, correct), grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2, 3),
                                                      has_aux=True))(x, w, b, weights)
  (want, want_correct), want_grads = jax.jit(jax.value_and_grad(plain, argnums=(0, 1, 2, 3),
                                                                has_aux=True))(x, w, b, weights)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(correct, want_correct)
  assert 0 < float(correct.mean()) < 1
  for got, ref in zip(grads, want_grads):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
  # the cotangent scales every gradient
  scaled = jax.jit(jax.grad(lambda *a: 3.0 * fused(*a)[0], argnums=(0, 1, 2, 3)))(
      x, w, b, weights)
  for got, ref in zip(scaled, want_grads):
    np.testing.assert_allclose(got, 3.0 * ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_the_decoders_weighted_loss_is_the_weighted_sum_of_its_per_token_loss(tie):
  """The training path (``weights=``, the fused readout) gives the value and parameter
  gradients of Σ weights · nll over the per-token path, past padding and skipped chunks."""
  from aetl_jax.models.sequence import RNNDecoder
  decoder = RNNDecoder(vocab_size=50, embed_dim=8, hidden=16, chunk=4, tie=tie)
  code = jax.random.normal(jax.random.PRNGKey(0), (6, 16))
  targets = jnp.pad(jnp.asarray(random_tokens(6, 8, seed=3, vocab=50)), ((0, 0), (0, 4)))
  # width 12 in chunks of 4: the last chunk is past every sentence, skipped
  params = decoder.init(jax.random.PRNGKey(1), code, targets)["params"]
  mask = (targets != PAD).astype(jnp.float32)
  weights = mask / jnp.sum(mask)

  def per_token(params):
    nll, correct = decoder.apply({"params": params}, code, targets)
    return jnp.sum(weights * nll), correct

  def weighted(params):
    return decoder.apply({"params": params}, code, targets, weights=weights)

  (want, want_correct), want_grads = jax.jit(jax.value_and_grad(per_token, has_aux=True))(params)
  (loss, correct), grads = jax.jit(jax.value_and_grad(weighted, has_aux=True))(params)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(correct, want_correct)
  jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6),
               grads, want_grads)
  # ungated (every step in one scan, as under by_width): the same loss
  ungated = jax.jit(lambda p: decoder.apply({"params": p}, code, targets, weights=weights,
                                           gated=False)[0])(params)
  np.testing.assert_allclose(ungated, want, rtol=1e-5)


def test_by_width_runs_the_smallest_width_and_takes_the_gradient_of_the_uncut_loss():
  """The loss at the width picked for the batch's longest sentence, its gradient in the
  parameters (taken inside the branch), scaled by the cotangent; tokens and keys take none."""
  from aetl_jax.models.sequence import by_width, widths
  assert widths(64) == (4, 8, 12, 16, 24, 32, 48, 64) and widths(10) == (4, 8, 10)
  table = jax.random.normal(jax.random.PRNGKey(0), (40, 3))

  def fn(tokens, params, key):
    h = jnp.tanh(params["table"][tokens] * params["scale"]) * (tokens != PAD)[..., None]
    noise = jax.random.uniform(key, ())
    return jnp.sum(h ** 2) + 0.0 * noise, {"width": jnp.asarray(tokens.shape[1], jnp.float32)}

  params = {"table": table, "scale": jnp.float32(1.3)}
  tokens = jnp.pad(jnp.asarray(random_tokens(5, 14, seed=2)), ((0, 0), (0, 50)))  # width 64
  longest = int(jnp.max(jnp.sum(tokens != PAD, -1)))
  key = jax.random.PRNGKey(3)
  cut = lambda p: 2.5 * by_width(fn, tokens, p, key)[0]
  whole = lambda p: 2.5 * fn(tokens, p, key)[0]
  value, grads = jax.jit(jax.value_and_grad(cut))(params)
  want, want_grads = jax.value_and_grad(whole)(params)
  np.testing.assert_allclose(value, want, rtol=1e-6)
  jax.tree.map(lambda g, r: np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6), grads,
               want_grads)
  width = float(by_width(fn, tokens, params, key)[1]["width"])
  assert width == min(w for w in widths(64) if w >= longest) < 64
