"""Domain adaptation between MNIST and USPS, both directions: the ADDA / DANN benchmark.

    aetl run --config experiments/digits_adaptation.py --workdir runs/digits_adaptation

Offline (``../shared/datasets/mnist`` and ``../shared/datasets/usps``, IDX files). The
sweep (``get_sweep``) runs MNIST → USPS and USPS → MNIST, each into its own sub-workdir.
The source classifier is ADDA's LeNet (``model.family='lenet'``: conv 20 - pool - conv 50 -
pool - dense 500, a 10-way head) trained on the labelled source (``objective.name=
'classification'``, Adam 1e-3, about 10,000 steps of 128 as ADDA's ``lenet_mnist``; 10% of
the source held out to evaluate it). Both domains are brought to 28×28 by
``data.resize='bbox'``: each digit's ink box rescaled to 20×20 and centred by mass, the way
MNIST itself was made; the sweep also runs ``data.resize='resize'`` (USPS stretched to 28×28,
as the papers did), where the two domains' digits differ in size and stroke. Budget 0 is
unsupervised adaptation: no USPS (or MNIST) label is used
anywhere, not even for validation (``transfer.validation='none'``: every method runs with the
papers' fixed settings, and no test image informs any choice). Budgets 1 and 10 add that many
target labels per class (counted in the caption; no validation labels).

Strategies: ``source_only`` (the source classifier as it is), ``scratch`` (target labels
only), ``dann`` (Ganin et al. 2016: ramped gradient reversal, SGD + momentum annealed,
100-unit domain classifier), ``adda`` (Tzeng et al. 2017, as its code runs it: the target
network — encoder and classifier layer, started as the source classifier — against a 500-500
discriminator on the classifiers' outputs, both players updated together, Adam 2e-4 with β1
0.5, 3,000 steps on MNIST → USPS and the paper code's 10,000 on USPS → MNIST),
``drcn`` (Ghifary et al. 2016), ``coral`` (Sun & Saenko 2016), ``mmd`` (2,000 steps each, the
schedules compressed to them; step counts cut for CPU time, not chosen on any score); one step
reads 64 source and 64 target images.

Reference rows (ADDA, Tzeng et al. 2017, Table 2; LeNet; 2,000 MNIST and 1,800 USPS
training images, no target labels)::

    | method | MNIST → USPS | USPS → MNIST |
    |---|---|---|
    | source only | 75.2 ± 1.6% | 57.1 ± 1.7% |
    | gradient reversal (DANN) | 77.1 ± 1.8% | 73.0 ± 2.0% |
    | ADDA | 89.4 ± 0.2% | 90.1 ± 0.8% |

(the MNIST → USPS entries were checked against the paper; the USPS → MNIST ones are as the
table is commonly quoted.) This experiment trains on the full training sets (60,000 MNIST,
7,291 USPS images) and tests on the full test sets (10,000 / 2,007).

What it gave (2-core CPU, budget 0, 5 seeds, mean ± 95% CI, paired differences to source
only; every cell at the experiment's settings unless the row says otherwise). The runs below
are points of the sweep run alone, e.g. USPS → MNIST under ``resize``::

    aetl run --config experiments/digits_adaptation.py --workdir runs/um --sweep data.resize=resize \
        --config.data.source=idx:../shared/datasets/usps --config.data.target=idx:../shared/datasets/mnist \
        --config.pretrain.epochs=175 --config.transfer.adda_steps=10000 \
        --config.transfer.budgets='(0,)' --config.transfer.strategies='("source_only","dann","adda")'

``data.resize='resize'`` (USPS stretched to 28×28: the papers' protocol)::

    | method | MNIST → USPS | seeds | USPS → MNIST | seeds | paper (ADDA, Table 2) |
    |---|---|---|---|---|---|
    | source only | 79.5% | one classifier | 57.8% | one classifier | 75.2 ± 1.6% / 57.1 ± 1.7% |
    | DANN | 84.3 ± 1.6% (+4.9 ± 1.6) | worst 82.0% | 79.6 ± 3.6% (+21.8 ± 3.6) | 75.1 / 79.8 / 81.0 / 79.0 / 83.0% | 77.1 ± 1.8% / 73.0 ± 2.0% |
    | ADDA (the paper's code) | **94.3 ± 0.4%** (+14.8 ± 0.4) | 94.4 / 94.4 / 94.3 / 94.7 / 93.8% | **91.9 ± 3.2%** (+34.1 ± 3.2), 10,000 steps | 91.1 / 95.6 / 92.3 / 88.5 / 91.9% | 89.4 ± 0.2% / 90.1 ± 0.8% |
    | ADDA (the paper's text) | 91.9 ± 1.1% (+12.4 ± 1.1) | worst 90.7% | 82.9 ± 0.9%; 86.2 ± 0.6% with 10,000 steps | 85.8 / 86.2 / 86.7 / 85.7 / 86.7% (10,000) | |
    | DRCN | 79.5 ± 1.3% (+0.0 ± 1.3) | 81.1 / 79.5 / 78.0 / 79.3 / 79.4% | not run | | (DRCN paper: ~92%, unchecked) |
    | CORAL | 81.4 ± 0.2% (+1.9 ± 0.2) | 81.4 / 81.3 / 81.2 / 81.6 / 81.5% | not run | | |
    | MMD | 86.1 ± 0.9% (+6.7 ± 0.9) | 85.2 / 86.5 / 86.8 / 86.6 / 85.6% | not run | | |

``data.resize='bbox'`` (each digit's ink box to 20×20, centred by mass, as MNIST was made)::

    | method | USPS → MNIST | seeds |
    |---|---|---|
    | source only | 87.3% | one classifier |
    | DANN | 94.4 ± 1.5% (+7.1 ± 1.5) | 95.0 / 94.9 / 94.9 / 92.2 / 94.9% |
    | ADDA (the paper's text) | 96.0 ± 0.5% (+8.7 ± 0.5) | 96.1 / 96.1 / 95.8 / 95.4 / 96.5% |

(MNIST → USPS under ``bbox``: 97.4% source only on one seed, a smoke run.)

Against the issue's targets: the best method is ≥ 89.4% on MNIST → USPS (ADDA, every seed)
and ≥ 90.1% on USPS → MNIST at budget 0 (ADDA as the paper's code runs it, in the mean and on
4 of 5 seeds under the papers' ``resize``; ADDA and DANN on every seed under ``bbox``); DANN is
above source only on every seed and above its published 77.1% / 73.0% in both directions.

What mattered, in order:

* **ADDA's code, not its text.** The paper's code (github.com/erictzeng/adda,
  ``tools/train_adda.py``) puts the discriminator on the LeNet's output layer — the 10 logits,
  so the target network's classifier layer adapts with its encoder — and runs the
  discriminator's and the mapping's updates in one call, at the same parameters. Written as
  the text describes it (discriminator on the 500-unit codes, the source head frozen, the two
  updates alternating: ``--config.transfer.adda_features=codes
  --config.transfer.adda_order=alternating``) ADDA stayed 3-4 points below its paper on
  USPS → MNIST whatever else changed: 10,000 steps instead of 3,000 (82.9 → 86.2%), the
  paper's sample sizes too (``--config.data.max_source=1800 --config.data.max_pool=2000
  --config.pretrain.epochs=700``: 86.7 ± 2.0%, source only 48.9%). As the code runs it, ADDA
  reaches the paper in both directions (the two changes were not measured apart).
* **Training length in optimiser steps**: DANN's schedules are functions of the training's
  progress, and ADDA needs its thousands of adversarial steps; one DANN cell (5 seeds as one
  vmapped program) took 253 s, one ADDA cell 200 s (MNIST → USPS, 3,000 steps) and 5 × ~200 s
  (USPS → MNIST, 10,000 steps, seeds one by one).
* **DANN's published recipe**: SGD with momentum, the annealed rate, the ramped reversal
  weight; with Adam and a constant weight it diverged to 22% in the earlier measurement.
* **The common shape**: under ``bbox`` source only is 87.3% on USPS → MNIST (57.8% under
  ``resize``); the geometry alone does more than most adaptation methods do under ``resize``.

DRCN adds nothing over source only here, far below what its paper reports for this pair; its
recipe (the paper's larger network, λ = 0.7, RMSprop, denoising and augmentation) is not
reproduced. CORAL gains little (+1.9 ± 0.2), MMD more (+6.7 ± 0.9); neither was run on
USPS → MNIST. Per seed, DRCN took ~310 s, CORAL and MMD ~80-160 s (2,000 steps).

With 10 target labels per class (MNIST → USPS, ``resize``, ``--config.transfer.budgets='(10,)'``;
5 seeds; no validation labels; 11 minutes for the three rows)::

    | method | 10 labels/class | vs scratch | vs source only |
    |---|---|---|---|
    | source only | 79.5% | −3.5 ± 2.1 | — |
    | scratch (LeNet on the 100 USPS labels) | 83.0 ± 2.1% | — | +3.5 ± 2.1 |
    | DANN (+ the labels' cross-entropy) | 90.0 ± 1.3% | +7.0 ± 3.0 | +10.5 ± 1.3 |

Not measured (CPU time): USPS → MNIST for DRCN, CORAL and MMD; the other ``bbox`` cells;
budget 1, and budget 10 for ADDA, DRCN, CORAL, MMD and for USPS → MNIST. A workdir refuses a
changed config, so each of those runs in a new ``--workdir`` (it pretrains again).
"""

from aetl_jax.tasks.transfer import default_config

MNIST, USPS = "idx:../shared/datasets/mnist", "idx:../shared/datasets/usps"


def get_config():
  """MNIST → USPS (the sweep adds USPS → MNIST); LeNet; 7 strategies × budgets 0/1/10 × 5 seeds."""
  c = default_config()
  c.data.update(source=MNIST, target=USPS, common_shape=(28, 28, 1), resize="bbox",
                label_space="shared")
  c.model.family = "lenet"
  c.objective.name = "classification"
  c.pretrain.update(epochs=22, batch_size=128, learning_rate=1e-3, schedule="constant",
                    eval_every=5, checkpoint_every=5)
  c.transfer.strategies = ("source_only", "scratch", "dann", "adda", "drcn", "coral", "mmd")
  c.transfer.update(budgets=(0, 1, 10), seeds=5, validation="none", val_per_class=0,
                    batch_size=64, learning_rate=1e-3, epochs=50, min_steps=1000)
  c.transfer.update(adaptation_epochs=1, adaptation_steps=2_000, adaptation_weight=1.0,
                    unlabelled_ratio=1.0, domain_hidden=100, dann_learning_rate=0.01,
                    adda_steps=3_000, adda_learning_rate=2e-4, adda_discriminator=(500, 500),
                    reconstruction_loss="bce")
  return c


def get_sweep():
  """Both directions × two common shapes: ``resize`` (USPS stretched to 28×28: the papers'
  protocol) and ``bbox``. A USPS source gets the same ~10,000 steps of 128 (175 epochs), and
  ADDA the paper code's 10,000 adversarial steps on USPS → MNIST."""
  return [{"data.source": source, "data.target": target, "pretrain.epochs": epochs,
           "transfer.adda_steps": adda_steps, "data.resize": resize}
          for resize in ("resize", "bbox")
          for source, target, epochs, adda_steps in ((MNIST, USPS, 22, 3_000),
                                                     (USPS, MNIST, 175, 10_000))]
