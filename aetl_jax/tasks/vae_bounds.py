"""Task ``vae_bounds``: a VAE on binarised images, scored by likelihood bounds in nats."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections
import numpy as np

from aetl_jax.core.config import ConfigError
from aetl_jax.data.sources import load_configured
from aetl_jax.evaluation.vae import vae_bounds
from aetl_jax.tasks.pretrain import pretrain
from aetl_jax.tasks.registry import TASKS
from aetl_jax.tasks.transfer import default_config as transfer_defaults


def default_config() -> ml_collections.ConfigDict:
  base = transfer_defaults()
  c = ml_collections.ConfigDict()
  c.task = "vae_bounds"
  c.data = dict(name="mnist", data_dir="", manual_dir="", binarize_seed=0)
  c.model = dict(family="mlp", widths=(512, 256), latent_dim=16)
  c.objective = dict(name="vae")
  c.pretrain = {k: v for k, v in base.pretrain.to_dict().items()
                if k != "include_target_pool"}  # the transfer task's own key
  c.pretrain.update(epochs=30, batch_size=128, learning_rate=1e-3, eval_every=5,
                    checkpoint_every=5)
  c.eval = dict(num_samples=200, num_test=10000)
  c.launch = base.launch.to_dict()
  return c


def load(config, *, progress: bool = True) -> dict:
  """Train and test images binarised once by sampling each pixel from Bernoulli(intensity)."""
  d = load_configured(config.data, progress=progress)
  rng = np.random.default_rng(config.data.binarize_seed)
  out = {split: (rng.random(x.shape) < x / d.max_value).astype(np.float32)
         for split, (x, _) in d.splits.items()}
  missing = [s for s in ("train", "test") if s not in out]
  if missing:
    raise ConfigError(f"config key 'data.name': {config.data.name} has no {', '.join(missing)} "
                      f"split; it has {', '.join(out)}")
  return {"splits": out, "route": d.route}


def check(config, data) -> None:
  if config.objective.name != "vae":
    raise ConfigError("config key 'objective.name': the vae_bounds task evaluates likelihood "
                      f"bounds of a VAE; valid: 'vae', got {config.objective.name!r}")


@TASKS.register("vae_bounds", load=load, check=check, default_config=default_config)
def run(config, workdir, data, *, progress: bool = True) -> dict:
  """Pretrain a VAE, then its test negative ELBO and importance-sampled NLL."""
  test = data["splits"]["test"][: config.eval.num_test]
  model, params, history = pretrain(config, data["splits"]["train"], test[:1000], workdir,
                                    progress=progress)
  bounds = vae_bounds(model, params, test, jax.random.PRNGKey(0),
                      num_samples=config.eval.num_samples)
  out = Path(workdir) / "results"
  out.mkdir(parents=True, exist_ok=True)
  record = {**bounds, "data": data["route"], "epochs": config.pretrain.epochs,
            "final_train_neg_elbo": history[-1].get("train_neg_elbo")}
  (out / "vae.json").write_text(json.dumps(record, indent=2))
  table = ("| model | test −ELBO (nats) | test NLL, IS K={k} (nats) |\n|---|---|---|\n"
           "| dense VAE, {e} epochs | {a:.2f} | {b:.2f} |").format(
               k=bounds["num_samples"], e=config.pretrain.epochs, a=bounds["neg_elbo_nats"],
               b=bounds["nll_is_nats"])
  (out / "results.md").write_text(table + "\n")
  return {"table": table, **record,
          "artifacts": ["results/vae.json", "results/results.md", "metrics/pretrain.jsonl",
                        "pretrain/checkpoints/"]}
