# ELA-ResNet-50 (ELA-S by default) on ImageNet-1k. The ELA paper (arXiv 2403.01123) has no official code, so there
# is no official recipe to follow: this config uses ECA-Net's (configs/classification/eca_resnet50_8xb32-100e_in1k.py,
# from BangguWu/ECANet @b332f6b main.py: SGD, batch 256 = 8 GPUs x 32, lr 0.1 / 10 every 30 epochs, 100 epochs,
# timm's crop + flip, bilinear), the standard ResNet recipe that attention-in-ResNet papers compare under.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.default_runtime import *
    from ._base_.imagenet import *
    from ._base_.sgd_step_100e import *

model = dict(type=ImageClassifier, backbone='ela_resnet50', num_classes=num_classes,
             backbone_kwargs=dict(ela_version='S'))
train_dataloader.update(batch_size=32, sampler=dict(type=DefaultSampler, shuffle=True))
train_dataloader.dataset.pipeline.update(auto_augment=None, color_jitter=None, interpolation='bilinear')
val_dataloader.dataset.pipeline.update(crop_pct=0.875, interpolation='bilinear')
test_dataloader = val_dataloader
