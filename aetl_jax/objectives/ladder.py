"""The Ladder network's cost (Rasmus et al. 2015): cross-entropy of the corrupted pass on the
labelled batch + the weighted denoising costs of every level on the unlabelled batch."""

from __future__ import annotations

from aetl_jax.core.config import is_number
from aetl_jax.models.variables import apply_train
from aetl_jax.objectives.classification import cross_entropy
from aetl_jax.objectives.registry import OBJECTIVES
from aetl_jax.core.registry import Check, Key

# λ per level, input first: the paper's MNIST values (Rasmus et al. 2015, section 4.1).
PAPER_COSTS = (1000.0, 10.0, 0.1, 0.1, 0.1, 0.1, 0.1)


COSTS = Check(lambda c: len(c) > 0 and all(is_number(x) and x >= 0 for x in c),
              lambda c: f"must be weights >= 0, one per level (input first), got {tuple(c)!r}")


@OBJECTIVES.register("ladder", model="ladder", roles=("images", "labelled"), batch_norm=True,
                     defaults=dict(
                         denoising_costs=Key(PAPER_COSTS, "weight of each level's denoising cost, input first",
                                             COSTS)))
def ladder(model, o):
  """Cross-entropy of the corrupted encoder on ``labelled`` + Σ_l λ_l × the denoising cost of
  level l on ``images`` (λ: ``denoising_costs``, input first); the clean pass's statistics
  update the running averages."""
  weights = tuple(float(c) for c in o.denoising_costs)

  def loss_fn(params, batches, rng):
    labelled = batches["labelled"]
    (logits, costs), state = apply_train(model, params, labelled["image"],
                                         batches["images"]["image"], rng, method="costs")
    ce, accuracy = cross_entropy(logits, labelled["label"])
    denoising = sum(weights[level] * cost for level, cost in costs.items())
    return ce + denoising, {"accuracy": accuracy, "classification": ce, "denoising": denoising,
                            **{f"denoising_{level}": c for level, c in costs.items()}, **state}

  return loss_fn
