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
probes' k / alpha / L2. Seeds vary the labelled draw and the initialisation.

The autoencoder: a denoising AE (masking 30% of the pixels) 784-1000-500-250, 30 epochs.
Strategies: ``scratch``; autoencoder transfer (``linear_probe``, ``finetune``, ``lp_ft``,
``joint_finetune``: + reconstruction of the pool while fine-tuning); manifold probes on the
frozen codes (``knn_probe``; ``spreading``: label spreading over a 10-NN graph of all 60,000
codes; ``knn_umap`` / ``spreading_umap``: the same after a 10-d UMAP of the codes, fitted on
the training pool only — inductive); ``pseudo_label`` (FixMatch-style, from the pretrained
encoder) and ``pseudo_label_scratch`` (the same from a random one); the Ladder network
(``ladder``, Rasmus et al. 2015: 784-1000-500-250-250-250-10, λ = 1000, 10, 0.1 ... noise 0.3;
``ladder_gamma``: the Γ-model), trained from scratch for 30 passes over the pool (the paper:
150; cut for CPU time, not chosen on any score). Few-label cells train for at least 1,000
optimiser steps (``transfer.min_steps``); the linear probe is logistic regression with
scikit-learn's L2 (C = 1), trained to convergence.

Published test errors at 100 labels (reference rows): NN baseline 25.81%, CAE 13.47%,
M1+TSVM 11.82%, M1+M2 3.33% (Kingma et al. 2014, Table 1); Ladder 1.06% (Rasmus et al.
2015), Ladder with the improved combinator 1.0% (Pezeshki et al. 2016).

RESULTS_PLACEHOLDER
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """Denoising AE 784-1000-500-250 on all 60k images; 13 strategies at 10 labels/class × 5 seeds."""
  c = default_config()
  c.data.update(source="mnist", target="mnist", source_fraction=0.0)
  c.model.update(family="mlp", widths=(1000, 500), code_dim=250)
  c.objective.update(name="denoising", corruption="masking", corruption_level=0.3)
  c.pretrain.update(epochs=30, batch_size=128, learning_rate=1e-3, eval_every=5,
                    checkpoint_every=5)
  c.transfer.strategies = (
      "scratch", "linear_probe", "finetune", "lp_ft", "joint_finetune", "knn_probe", "spreading",
      "knn_umap", "spreading_umap", "pseudo_label", "pseudo_label_scratch", "ladder",
      "ladder_gamma")
  c.transfer.update(budgets=(10,), seeds=5, epochs=100, min_steps=1000, learning_rate=1e-3,
                    val_per_class=5, validation="extra", batch_size=32)
  c.transfer.update(lp_epochs=50, reconstruction_weight=1.0, unlabelled_ratio=4.0,
                    semi_epochs=4, pseudo_label_weight=1.0, confidence=0.95)
  c.transfer.update(ladder_epochs=30, ladder_learning_rate=0.002)
  return c
