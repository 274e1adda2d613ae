# ECA-ResNet-50 on ImageNet-1k at the ECA-Net paper's recipe (Wang et al., CVPR 2020, §4.1): the ResNet
# schedule (SGD, batch 256 = 8 GPUs x 32, lr 0.1 / 10 every 30 epochs, 100 epochs) with random resized crop and
# flip only. The official weights reach 77.42% top-1 with the 224 centre crop at 0.875.
from mmengine.config import read_base

from visionattn.engine import ImageClassifier

with read_base():
    from .._base_.datasets.imagenet import *
    from .._base_.default_runtime import *
    from .._base_.schedules.sgd_step_100e import *

model = dict(type=ImageClassifier, backbone='eca_resnet50', num_classes=num_classes)
train_dataloader.update(batch_size=32)
train_dataloader.dataset.pipeline.update(auto_augment=None, random_erasing=0.0, interpolation='bilinear')
val_dataloader.dataset.pipeline.update(interpolation='bilinear')
test_dataloader = val_dataloader
