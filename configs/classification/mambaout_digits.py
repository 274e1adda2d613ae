# Smoke run of the adopted MambaOut family (timm's) on the embedded digits: MambaOut-Femto from scratch, 32x32.
# MambaOut has no BatchNorm, so a data-parallel run computes exactly the single-process loss (tests use that).
from mmengine.config import read_base

from visionattn.engine import ImageClassifier

with read_base():
    from .._base_.datasets.digits import *
    from .._base_.default_runtime import *
    from .._base_.schedules.adamw_cosine import *

model = dict(type=ImageClassifier, backbone='mambaout_femto', num_classes=num_classes, label_smoothing=0.1)
max_epochs = 6
warmup_epochs = 1
train_cfg.update(max_epochs=max_epochs, val_interval=2)
param_scheduler[0].update(end=warmup_epochs)
param_scheduler[1].update(begin=warmup_epochs, end=max_epochs)
default_hooks.checkpoint.update(interval=2)
default_hooks.logger.update(interval=10)
auto_scale_lr.update(base_batch_size=32)
