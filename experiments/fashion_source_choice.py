"""Which source for Fashion-MNIST with 1 / 10 labels per class? Nothing, unlabelled MNIST,
labelled MNIST or unlabelled Fashion-MNIST.

    aetl run --config experiments/fashion_source_choice.py --workdir runs/fashion_sources  # TFDS
    aetl run --config experiments/fashion_source_choice.py --workdir runs/fashion_sources \\
        --config.data.target=idx:../shared/datasets/fashion_mnist \\
        --sweep data.source=idx:../shared/datasets/mnist,idx:../shared/datasets/fashion_mnist \\
        --sweep objective.name=reconstruction,classification                          # offline
    aetl compare runs/fashion_sources

``get_sweep()`` (or the two ``--sweep`` flags) runs four points, each into its own
sub-workdir: the encoder pretrained as an autoencoder (unlabelled) or as a classifier
(labelled) on MNIST, and the same on half of Fashion-MNIST's training images (disjoint
from the other half, the target pool). ``scratch`` (no source) runs in every point. The
target test set is the same 10,000 Fashion-MNIST images everywhere; the pools differ
(60,000 images with an MNIST source, 30,000 with the Fashion source), so points compare
unpaired.

Gave (offline route, 7 min 29 s on 2 CPU cores for the four points; 5 seeds; test = the
10,000 Fashion-MNIST test images; Δ = paired by seed against ``scratch`` of the same point,
mean ± 95% CI; each point's full tables are in its results.md)::

    | source (pretraining) | scratch, 1/class | best transfer Δ vs scratch, 1/class | scratch, 10/class | best transfer Δ vs scratch, 10/class |
    |---|---|---|---|---|
    | MNIST, unlabelled (AE) | 41.6 ± 9.7% | finetune -0.9 ± 5.5 pt | 69.6 ± 2.1% | finetune -0.3 ± 2.0 pt |
    | MNIST, labelled (classifier) | 41.6 ± 9.7% | finetune -6.2 ± 6.6 pt | 69.6 ± 2.1% | finetune -2.0 ± 2.1 pt |
    | Fashion half, unlabelled (AE) | 45.2 ± 8.0% | finetune +3.3 ± 2.8 pt | 68.8 ± 1.4% | finetune +0.4 ± 1.0 pt |
    | Fashion half, labelled (classifier) | 45.2 ± 8.0% | lp_ft +19.2 ± 19.0 pt | 68.8 ± 1.4% | linear_probe +13.4 ± 5.9 pt |

The source matters, and labels matter more than the domain: a *labelled* in-domain source
helps most (+13.3 ± 2.8 points with LP-FT at 10 labels per class; its linear probe reaches
82.2%). An unlabelled in-domain autoencoder helps a little at 1 label per class (+3.3 ± 2.8
with fine-tuning) and not at 10 (+0.4 ± 1.0); from MNIST, unlabelled gives nothing (−0.3 ±
2.0) and labelled hurts (LP-FT −4.8 ± 2.7 at 10/class). Linear probes on autoencoder codes
are 24-36 points below scratch.
"""

from aetl_jax.tasks.transfer import default_config

MNIST = "mnist"
FASHION = "fashion_mnist"


def get_config():
  """Fashion-MNIST target, dense 784-512-256-64 encoder, 4 strategies × budgets 1/10 × 5 seeds."""
  c = default_config()
  c.data.update(source=MNIST, target=FASHION, source_fraction=0.5)
  c.model.update(family="mlp", widths=(512, 256), code_dim=64)
  c.pretrain.update(epochs=15, batch_size=128, learning_rate=1e-3, eval_every=5,
                    checkpoint_every=5)
  c.transfer.update(strategies=("scratch", "linear_probe", "finetune", "lp_ft"),
                    budgets=(1, 10), seeds=5, epochs=50, lp_epochs=25, learning_rate=1e-3)
  return c


def get_sweep(mnist=MNIST, fashion=FASHION):
  """The four sources (the target stays Fashion-MNIST)."""
  return [{"data.source": source, "objective.name": objective}
          for source in (mnist, fashion) for objective in ("reconstruction", "classification")]
