# ELA-ResNet-50 (ELA-S by default) on ImageNet-1k. The ELA paper (arXiv 2403.01123) has no official code and its
# training recipe was not verified here: this config uses the standard ResNet recipe that ECA-Net also used
# (SGD, batch 256 = 8 GPUs x 32, lr 0.1 / 10 every 30 epochs, 100 epochs, crop + flip).
from mmengine.config import read_base

from visionattn.engine import ImageClassifier

with read_base():
    from .._base_.datasets.imagenet import *
    from .._base_.default_runtime import *
    from .._base_.schedules.sgd_step_100e import *

model = dict(type=ImageClassifier, backbone='ela_resnet50', num_classes=num_classes,
             backbone_kwargs=dict(ela_version='S'))
train_dataloader.update(batch_size=32)
train_dataloader.dataset.pipeline.update(auto_augment=None, random_erasing=0.0, interpolation='bilinear')
val_dataloader.dataset.pipeline.update(interpolation='bilinear')
test_dataloader = val_dataloader
