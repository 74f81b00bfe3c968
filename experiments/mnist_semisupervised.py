"""Semi-supervised MNIST: every training image unlabelled, 10 labels per class (100 in all).

    aetl run --config experiments/mnist_semisupervised.py --workdir runs/mnist_semi     # TFDS download
    aetl run --config experiments/mnist_semisupervised.py --workdir runs/mnist_semi \\
        --config.data.source=idx:../shared/datasets/mnist \\
        --config.data.target=idx:../shared/datasets/mnist                              # offline

The setting of Kingma et al. 2014 (Table 1) and Rasmus et al. 2015: the 60,000 training
images are all available without labels (``data.source_fraction=0``: the autoencoder
pretrains on the whole target pool, less 10% held out to evaluate it), 10 labels per class
are drawn from them, and the 10,000 test images score. Validation: 5 more labels per class
(``transfer.validation='extra'``), so every cell uses 150 labels; they choose only the
probes' k / alpha / L2 / UMAP pair (the probe behind ``propagate_*`` included). Seeds vary
the labelled draw and the initialisation.

The autoencoder: a denoising AE (masking 30% of the pixels) 784-1000-500-250, 30 epochs.
Strategies: ``scratch``; autoencoder transfer (``linear_probe``, ``finetune``, ``lp_ft``,
``joint_finetune``: + reconstruction of the pool while fine-tuning); manifold probes on the
frozen codes (``knn_probe``; ``spreading``: label spreading over a 10-NN graph of all 60,000
codes; ``knn_umap`` / ``spreading_umap``: the same after a 10-d UMAP of the codes, fitted on
the training pool only — inductive; ``knn_umap_pixels``: the same on the pixels, what the
graph owes to the autoencoder); ``propagate_finetune`` (the recipe: every pool image labelled
by ``knn_umap`` on the pretrained codes, then the pretrained encoder + a head trained on
them for 10 passes, as Iscen et al. 2019 do with a network's own features) and
``propagate_scratch`` (the same labels, a random start); ``pseudo_label`` (FixMatch-style, from the pretrained
encoder) and ``pseudo_label_scratch`` (the same from a random one); the Ladder network
(``ladder``, Rasmus et al. 2015: 784-1000-500-250-250-250-10, λ = 1000, 10, 0.1 ... noise 0.3;
``ladder_gamma``: the Γ-model), trained from scratch for 30 passes over the pool (the paper:
150; cut for CPU time, not chosen on any score). Few-label cells train for at least 1,000
optimiser steps (``transfer.min_steps``); the linear probe is logistic regression with
scikit-learn's L2 (C = 1), trained to convergence.

Published test errors at 100 labels (reference rows): NN baseline 25.81%, CAE 13.47%,
M1+TSVM 11.82%, M1+M2 3.33% (Kingma et al. 2014, Table 1); Ladder 1.06% (Rasmus et al.
2015), Ladder with the improved combinator 1.0% (Pezeshki et al. 2016).

What it gave (2026-12-04, 2-core CPU, offline IDX MNIST as in the second command; the
``knn_umap_pixels``, ``propagate_*`` and ``ladder_gamma`` rows 2026-12-05, the same pretrained
autoencoder, draws and seeds; 10 labels per class + 5 validation labels per class; 5 seeds;
mean ± 95% CI; paired differences to ``scratch`` by seed)::

    | strategy | test accuracy | error | vs scratch | worst seed |
    |---|---|---|---|---|
    | scratch | 77.8 ± 2.5% | 22.2% | — | 76.0% |
    | linear_probe | 78.0 ± 2.5% | 22.0% | +0.3 ± 0.4 | 75.9% |
    | finetune | 79.3 ± 2.6% | 20.7% | +1.6 ± 1.1 | 77.8% |
    | lp_ft | 79.8 ± 2.7% | 20.2% | +2.0 ± 0.8 | 77.5% |
    | joint_finetune | 78.2 ± 2.9% | 21.8% | +0.4 ± 0.9 | 76.0% |
    | knn_probe | 77.9 ± 4.1% | 22.1% | +0.1 ± 2.8 | 73.4% |
    | spreading | 92.1 ± 1.5% | 7.9% | +14.4 ± 1.1 | 90.7% |
    | knn_umap (inductive) | 95.5 ± 1.0% | 4.5% | +17.7 ± 2.4 | 94.5% |
    | spreading_umap (inductive) | 95.2 ± 1.3% | 4.8% | +17.5 ± 2.3 | 93.6% |
    | knn_umap_pixels (inductive) | 94.2 ± 1.6% | 5.8% | +16.4 ± 3.0 | 92.3% |
    | propagate_finetune | 96.4 ± 1.1% | 3.6% | +18.7 ± 2.4 | 95.2% |
    | propagate_scratch | 96.3 ± 1.0% | 3.7% | +18.5 ± 2.4 | 95.3% |
    | pseudo_label | 93.0 ± 1.1% | 7.0% | +15.2 ± 2.7 | 91.9% |
    | pseudo_label_scratch | 93.1 ± 0.9% | 6.9% | +15.4 ± 2.3 | 92.2% |
    | ladder | 98.4 ± 0.6% | 1.62% | +20.6 ± 2.9 | 97.6% |
    | ladder_gamma | 93.6 ± 1.5% | 6.43% | +15.8 ± 2.0 | 92.3% |
    | (Ladder, Rasmus et al. 2015, 150 epochs) | | 1.06 ± 0.37% | | |
    | (CAE; M1+M2: Kingma et al. 2014, Table 1) | | 13.47%; 3.33% | | |

The Ladder network (30 passes over the 60,000 images, ~18,000 steps; 5 seeds as one vmapped
program: 1,227 s per seed, ~100 minutes for the five, on 2 cores shared with another job) reaches 1.62% mean error: the ≤ 2% target
holds for the mean and on 4 of 5 seeds (97.61% on seed 1); the paper's 1.06% used 150 epochs.
The Γ-model (``ladder_gamma``: the class layer's denoising cost only, the same 30 passes, 52
minutes for the five) reaches 6.43% (94.19 / 95.33 / 92.61 / 93.47 / 92.25%), 4.8 ± 1.9 pt
below the full ladder: the lower levels' costs carry most of the gain at 100 labels, as in the
paper's Table 1 (its Γ-model at 100 labels ≈ 4.3 ± 2.3%, quoted from memory, not re-checked
offline; 150 epochs there).

Wall time on the 2 cores, the five seeds of each strategy together: ``ladder`` 102 minutes,
``ladder_gamma`` 52, ``spreading`` 11 (label spreading over 60,000 nodes), ``propagate_finetune``
4.1 (2.8 with the probe's UMAP already fitted), ``pseudo_label`` 3.8, ``joint_finetune`` 2.9,
``knn_umap`` 2.5 (one UMAP fit, cached for every seed and ``spreading_umap``), the others under
a minute each; the autoencoder's 30 epochs of pretraining were not timed by these runs.

Every gradient-trained cell fits its 100 labels (training accuracy 100%, so no † flag). What
moved since the cells were trained for 100 passes over 100 images: the linear probe now
converges (it fit 63-81% of its own labels before, 52.4% test; now 100% and 78.0%; it
matches scikit-learn's logistic regression in tests/test_semi_supervised.py), and the
autoencoder transfer now beats scratch with a paired CI above 0 (``lp_ft`` +2.0 ± 0.8,
``finetune`` +1.6 ± 1.1), but far from the CAE's 86.5% (13.47% error). Pretraining adds nothing to pseudo-labelling (−0.2 ± 0.7
for the pretrained start against the random one). The codes hold the classes for a graph
method: UMAP then k-NN reaches 95.5% inductively, but the ≤ 5% error target holds on 3 of 5
seeds only (94.54% and 94.99% miss it); trained on the labels it propagates
(``propagate_finetune``, 2026-12-05), the network holds it on every seed (worst 95.22%).

UMAP's own settings chosen on the validation labels too (2026-12-05, the same pretrained
autoencoder and draws; ``--config.transfer.strategies='("knn_umap","spreading_umap")'
--config.transfer.umap_grid='((15,0.1),(30,0.0))'``: the library's default and the pair its
documentation suggests for clustering, each an embedding fitted on the pool only; 6 minutes
for both probes × 5 seeds): knn_umap 95.5 ± 0.9% (95.57 / 96.54 / 94.54 / 95.18 / 95.88%;
the validation labels chose (30, 0.0) on one seed), spreading_umap 95.1 ± 1.2% (95.51 /
96.06 / 94.87 / 95.47 / 93.56%; (30, 0.0) on one seed). Five validation labels per class tie
the two settings on most seeds, and the worst seed stays at 94.54%: the target still holds on
4 of 5 seeds at best, not on every one.

The autoencoder recipe that reaches the CAE and beyond (2026-12-05, the same pretrained
autoencoder and draws; ``--config.transfer.strategies='("propagate_finetune",
"propagate_scratch")'``, 9 minutes; the pixel rows with ``'("knn_umap_pixels",
"propagate_finetune")' --config.transfer.propagate_with=knn_umap_pixels``, 5 minutes):
``propagate_finetune`` reaches 3.6% error (96.68 / 97.58 / 95.22 / 95.97 / 96.75%), ≤ 5% on
every seed, against the CAE's 13.47%. Each lever alone, paired by seed (n = 5):

* the graph on the autoencoder's codes instead of the pixels: +1.0 ± 0.8 pt after training
  (pixels: 95.4 ± 1.7%, worst seed 93.46%), +1.3 ± 0.9 pt for k-NN on the UMAP alone
  (95.5% vs 94.2%): the autoencoder's share;
* training on every pool image with the propagated labels instead of classifying by the
  probe: +0.9 ± 0.2 pt over ``knn_umap`` (the pool's propagated labels are 95.2-97.4% right;
  the trained network, 96.4% on the test set);
* the pretrained start instead of a random one, with the same labels: +0.1 ± 0.2 pt, not
  significant: the autoencoder helps through its codes' neighbourhoods, not its weights.

The number of passes (10) was set before the run and not tuned; the validation images are
in the pool with the labels the probe gave them, so ``val_accuracy`` of these cells scores
images they trained on (it chooses nothing).

Levers measured for the autoencoder fine-tuning recipes (3 seeds, 10 labels/class, the same draws; earlier
runs of this file): a plain AE 784-512-256-64, finetune 77.4% vs scratch 76.9%; the denoising
AE 784-1000-500-250 (this default) 80.2% vs 78.4%; random translations while fine-tuning lift
both alike (scratch 83.5%, finetune 82.6%; with the denoising AE 83.9% / 83.7%); 4,000 steps
instead of 1,000 with both: finetune 84.0% vs scratch 83.1% (+1.0 ± 1.0); joint_finetune 83.9%.
UMAP with min_dist 0 or 20 neighbours did not beat the defaults. None of these fine-tuning
recipes on the 100 labels alone reached the CAE; training on the propagated labels does.
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """Denoising AE 784-1000-500-250 on all 60k images; 16 strategies at 10 labels/class × 5 seeds."""
  c = default_config()
  c.data.update(source="mnist", target="mnist", source_fraction=0.0)
  c.model.update(family="mlp", widths=(1000, 500), code_dim=250)
  c.objective.update(name="denoising", corruption="masking", corruption_level=0.3)
  c.pretrain.update(epochs=30, batch_size=128, learning_rate=1e-3, eval_every=5,
                    checkpoint_every=5)
  c.transfer.strategies = (
      "scratch", "linear_probe", "finetune", "lp_ft", "joint_finetune", "knn_probe", "spreading",
      "knn_umap", "spreading_umap", "knn_umap_pixels", "propagate_finetune", "propagate_scratch",
      "pseudo_label", "pseudo_label_scratch", "ladder", "ladder_gamma")
  c.transfer.update(budgets=(10,), seeds=5, epochs=100, min_steps=1000, learning_rate=1e-3,
                    val_per_class=5, validation="extra", batch_size=32)
  c.transfer.update(lp_epochs=50, reconstruction_weight=1.0, unlabelled_ratio=4.0,
                    semi_epochs=4, pseudo_label_weight=1.0, confidence=0.95)
  c.transfer.update(propagate_with="knn_umap", propagate_epochs=10, propagate_batch_size=128)
  c.transfer.update(ladder_epochs=30, ladder_learning_rate=0.002)
  return c
