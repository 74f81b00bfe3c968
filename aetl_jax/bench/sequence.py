"""The sequence autoencoder's pretraining rate against a PyTorch LSTM autoencoder.

    python -m aetl_jax.bench.sequence [--sentences 4096] [--batch 64] [--repeats 3] [--no-torch]

The model of ``sst2_transfer`` (vocabulary 4,000, embeddings 128, LSTM 256,
teacher-forced decoder, output tied to its embedding) on token sequences whose lengths follow SST-2's
training phrases (a log-normal fitted to them: median 8 tokens, 90th
percentile 22, padded to 64). Both sides see length-bucketed batches:
aetl_jax's epoch buckets a token stream itself and its loss cuts each batch to
the smallest static width (4, 8, 12, 16, 24, 32, 48, 64) that holds the longest sentence
(``models.sequence.by_width``); PyTorch gets each batch cut to its longest
sentence, with ``pack_padded_sequence`` in the encoder, and the same Adam step.
One epoch per call, the whole epoch one compiled ``scan``; median of
``--repeats`` interleaved rounds after warm-up; tokens/s counts the
non-padding tokens (end token included). Also a row of the same model on
plainly shuffled batches (most batches then hold a long sentence).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

VOCAB, EMBED, HIDDEN, MAX_LEN = 4000, 128, 256, 64
QUICK = dict(vocab=300, embed=16, hidden=32)  # --quick: checks the harness only


def sentences(n: int, seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
  """Token ids (n, MAX_LEN) with SST-2-like lengths, an end token, zero padding."""
  rng = np.random.default_rng(seed)
  lengths = np.clip(np.round(rng.lognormal(np.log(8.0), 0.8, n)), 1, MAX_LEN - 1).astype(int)
  ids = np.zeros((n, MAX_LEN), np.int32)
  for i, k in enumerate(lengths):
    ids[i, :k] = rng.integers(5, vocab, k)
    ids[i, k] = 3
  return ids


def jax_epoch(ids, batch: int, bucketed: bool = True, runner: str = "scan", *, vocab=VOCAB,
              embed=EMBED, hidden=HIDDEN):
  """One pretraining epoch as a thunk: length-bucketed batches (as pretraining feeds a token
  stream), or plain shuffled ones (every batch then holds some long sentence)."""
  from aetl_jax.api import load_config
  from aetl_jax.core.optim import make_optimizer
  from aetl_jax.engine.loop import make_epoch_fn
  from aetl_jax.engine.state import TrainState
  from aetl_jax.engine.step import make_train_step
  from aetl_jax.models.registry import build_autoencoder
  from aetl_jax.objectives.registry import make_objective
  from aetl_jax.tasks.transfer import default_config
  config = load_config(default_config(), [
      "model.family='rnn'", f"model.vocab_size={vocab}", f"model.embed_dim={embed}",
      f"model.hidden={hidden}", "objective.name='seq_reconstruction'"])
  model = build_autoencoder(config.model, (MAX_LEN,), "seq_autoencoder")
  params = model.init(jax.random.PRNGKey(0), ids[:1], method="reconstruct")["params"]
  tx = make_optimizer(learning_rate=1e-3)
  step = make_train_step(make_objective(model, config.objective), tx)
  if bucketed:  # a token stream behind a feed is batched by length
    epoch = make_epoch_fn(step, feed=(("images", "source", batch),), runner=runner)
    data = {"source": {"image": jax.device_put(ids)}}
  else:  # the batch itself: a plain shuffle
    epoch = make_epoch_fn(step, batch_size=batch, runner=runner)
    data = {"images": {"image": jax.device_put(ids)}}
  holder = {"s": TrainState.create(params, tx)}

  def run():
    holder["s"], m = epoch(holder["s"], data, jax.random.PRNGKey(1))
    return m

  return run


def torch_epoch(ids, batch: int, *, vocab=VOCAB, embed=EMBED, hidden=HIDDEN):
  """The same autoencoder in PyTorch on the same kind of length-bucketed batches."""
  import torch
  from torch import nn
  from torch.nn.utils.rnn import pack_padded_sequence
  torch.manual_seed(0)

  class SeqAE(nn.Module):
    def __init__(self):
      super().__init__()
      self.enc_embed, self.dec_embed = nn.Embedding(vocab, embed), nn.Embedding(vocab, embed)
      self.encoder = nn.LSTM(embed, hidden, batch_first=True)
      self.init_state = nn.Linear(hidden, 2 * hidden)
      self.decoder = nn.LSTM(embed, hidden, batch_first=True)
      self.out_proj = nn.Linear(hidden, embed, bias=False)  # tied output, as model.tie_output
      self.out_bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, x, lengths):
      packed = pack_padded_sequence(self.enc_embed(x), lengths, batch_first=True,
                                    enforce_sorted=False)
      _, (h, _) = self.encoder(packed)
      s = self.init_state(h[0])
      state = (torch.tanh(s[:, :hidden])[None].contiguous(), s[:, hidden:][None].contiguous())
      inputs = torch.cat([torch.full_like(x[:, :1], 2), x[:, :-1]], 1)
      out, _ = self.decoder(self.dec_embed(inputs), state)
      return self.out_proj(out) @ self.dec_embed.weight.T + self.out_bias

  model = SeqAE()
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  loss_fn = nn.CrossEntropyLoss(ignore_index=0)
  x = torch.from_numpy(ids.astype(np.int64))
  lengths = (x != 0).sum(1)
  n = len(ids) // batch * batch

  def epoch():
    order = np.random.permutation(len(ids))[:n]
    window = np.arange(n) // (32 * batch)
    order = order[np.lexsort((lengths.numpy()[order], window))].reshape(-1, batch)
    for b in np.random.permutation(len(order)):
      idx = torch.from_numpy(order[b])
      lb = lengths[idx]
      xb = x[idx, : int(lb.max())]
      opt.zero_grad(set_to_none=True)
      logits = model(xb, lb)
      loss = loss_fn(logits.reshape(-1, vocab), xb.reshape(-1))
      loss.backward()
      opt.step()

  return epoch


def contenders(ids, batch: int, use_torch: bool, dims: dict, plain: bool = True) -> dict:
  out = {"aetl_jax (bucketed)": jax_epoch(ids, batch, True, **dims)}
  if plain:
    out["aetl_jax (plain shuffle)"] = jax_epoch(ids, batch, False, **dims)
  if use_torch:
    out["torch"] = torch_epoch(ids, batch, **dims)
  return out


def rows(n: int, batch: int, repeats: int, use_torch: bool, quick: bool = False) -> list[dict]:
  from aetl_jax.bench.timing import timed_interleaved, with_ratios
  dims = QUICK if quick else dict(vocab=VOCAB, embed=EMBED, hidden=HIDDEN)
  ids = sentences(n, vocab=dims["vocab"])
  used = n // batch * batch
  tokens = int(np.sum(ids != 0)) * used / n
  # --quick checks the harness: the plain-shuffle row would run the bucketed row's code again
  results = timed_interleaved(contenders(ids, batch, use_torch, dims, plain=not quick), repeats)
  return with_ratios(results, "torch", lambda name, seconds, _: {
      "model": name, "batch": batch, "sentences_per_s": used / seconds,
      "tokens_per_s": tokens / seconds})


def print_rows(table: list[dict]) -> None:
  print(f"{'sequence AE (LSTM 256, vocab 4k)':<32} {'batch':>5} {'sent/s':>8} {'tokens/s':>9} "
        f"{'vs torch':>8} {'compiles':>8}")
  from aetl_jax.bench.timing import ratio_text
  for r in table:
    ratio = ratio_text(r["ratio_vs_torch"])
    print(f"{r['model']:<32} {r['batch']:5d} {r['sentences_per_s']:8.0f} "
          f"{r['tokens_per_s']:9.0f} {ratio} {r['compiles']:8d}", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sentences", type=int, default=4096)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true")
  args = parser.parse_args(argv)
  from aetl_jax.bench.timing import torch_usable
  use_torch = not args.no_torch and torch_usable(threads=False)
  print_rows(rows(args.sentences, args.batch, args.repeats, use_torch))


if __name__ == "__main__":
  from aetl_jax.core.heap import start
  start()
  main()
