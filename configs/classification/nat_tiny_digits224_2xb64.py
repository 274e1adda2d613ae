# The digits smoke run scaled up for GPUs (multi-GPU checks, docs/benchmarks/ddp_h200x2.md): nat_tiny from scratch
# at 224x224, 64 images per GPU. Two GPUs give a global batch of 128; a one-GPU run with
# `--cfg-options train_dataloader.batch_size=128` has the same global batch and, since DefaultSampler deals the
# shuffled indices round-robin and augmentations are seeded per sample, the same images in every step.
#   torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch --amp
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_cosine_digits import *
    from ._base_.digits import *

img_size = 224
model = dict(type=ImageClassifier, backbone='nat_tiny', num_classes=num_classes, label_smoothing=0.1)
optim_wrapper.paramwise_cfg.update(custom_keys={'rpb': dict(decay_mult=0.0)})  # NAT's relative-position bias: no decay
train_dataloader.update(batch_size=64, num_workers=8, persistent_workers=True)
train_dataloader.dataset.pipeline.update(img_size=img_size)
val_dataloader.update(num_workers=4)
val_dataloader.dataset.pipeline.update(img_size=img_size)
test_dataloader = val_dataloader
# 20 epochs of 11 steps (1,437 training images, global batch 128).
max_epochs = 20
train_cfg.update(max_epochs=max_epochs, val_interval=5)
param_scheduler[1].update(end=max_epochs)
optim_wrapper.optimizer.update(lr=1e-3)
auto_scale_lr.update(base_batch_size=128)
default_hooks.checkpoint.update(interval=5)
default_hooks.logger.update(interval=5)
