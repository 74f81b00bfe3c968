"""A pretrained ResNet-18 backbone → Olivetti faces (40 people) at 1 / 3 / 5 images per person.

    aetl run --config experiments/olivetti_backbone.py --workdir runs/olivetti_backbone  # offline

The backbone is torchvision's ResNet-18 (family ``resnet18``: its layout, BatchNorm with
running statistics). Offline it is trained here on a labelled source this project has in
``../shared``: **Fashion-MNIST**'s 60,000 training images (``objective=classification``),
brought with the faces to 32×32 grey (``data.common_shape``; the model repeats grey to
3 channels and standardises with ImageNet's statistics). The faces are a different domain
(people, not clothes): what transfers is generic low-level structure. Target: 4 images per
person are the fixed test set (160 faces), the other 6 the pool the 1 / 3 / 5 training
images per person and 1 validation image per person are drawn from; 5 seeds.

Strategies: ``scratch`` (random ResNet-18), ``frozen_backbone`` (the recipe: frozen
backbone + new 40-class head by SGD, momentum 0.9, lr 1e-3, then everything fine-tuned at
1e-4), ``finetune``, ``lp_ft`` and ``backbone_ae`` (the backbone becomes an autoencoder's
encoder: with a new decoder it reconstructs the pool's faces, labels unused, then encoder
+ head fine-tune).

With internet, start from ImageNet instead (converted once through torchvision, saved with
Orbax in ``WORKDIR/pretrain/backbone``, then used without torch; ``pretrain.epochs=0``
keeps the ImageNet backbone as it is)::

    pip install 'aetl_jax[torch]'
    aetl run --config experiments/olivetti_backbone.py --workdir runs/olivetti_imagenet \\
        --config.model.weights=torchvision:IMAGENET1K_V1 --config.pretrain.epochs=0 \\
        --config.data.common_shape='(64, 64, 1)'

Gave: see the table below (filled from the run that produced it).
"""

from aetl_jax.tasks.transfer import default_config


def get_config():
  """Fashion-MNIST ResNet-18 backbone → Olivetti faces; five strategies × 1/3/5 per person."""
  c = default_config()
  c.data.update(source="idx:../shared/datasets/fashion_mnist",
                target="olivetti:../shared/datasets/olivetti_faces",
                common_shape=(32, 32, 1), resize="resize", test_fraction=0.4)
  c.model.update(family="resnet18", code_dim=0, input_norm="imagenet")
  c.objective.name = "classification"
  c.pretrain.update(epochs=2, batch_size=128, learning_rate=1e-3, eval_every=1,
                    checkpoint_every=1)
  c.transfer.strategies = ("scratch", "frozen_backbone", "finetune", "lp_ft", "backbone_ae")
  c.transfer.update(budgets=(1, 3, 5), seeds=5, epochs=30, batch_size=20, learning_rate=1e-3,
                    val_per_class=1, lp_epochs=30, ft_lr_mult=0.3,
                    recipe_ft_epochs=30, ae_epochs=30)
  return c
