# ECA-ResNet-50 on ImageNet-1k at the official recipe: BangguWu/ECANet @b332f6b, main.py (the torchvision ImageNet
# example: SGD momentum 0.9, wd 1e-4 on every parameter, batch 256, lr 0.1 / 10 every 30 epochs, 100 epochs, plain
# cross-entropy; training RandomResizedCrop(224) + flip, evaluation Resize(256) + CenterCrop(224), both bilinear,
# fp32) and README.md (`--ksize 3557` for R50). The official weights reach 77.42% top-1.
# Here the crop and flip are timm's (create_transform, bilinear, no colour jitter): torchvision's crop algorithm
# (10 tries, then a centre crop), drawn from python's generator instead of torch's.
# Still different: the README's command runs DataParallel on 4 GPUs (BatchNorm statistics over 64 images per GPU);
# 8 x 32 here computes them over 32 (use 4 x 64 to match).
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.default_runtime import *
    from ._base_.imagenet import *
    from ._base_.sgd_step_100e import *

model = dict(type=ImageClassifier, backbone='eca_resnet50', num_classes=num_classes)
train_dataloader.update(batch_size=32, sampler=dict(type=DefaultSampler, shuffle=True))
train_dataloader.dataset.pipeline.update(auto_augment=None, color_jitter=None, interpolation='bilinear')
val_dataloader.dataset.pipeline.update(crop_pct=0.875, interpolation='bilinear')
test_dataloader = val_dataloader
