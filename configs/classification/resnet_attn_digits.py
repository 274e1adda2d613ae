# Smoke run of the ECA/ELA-ResNet family on the embedded digits: ECA-ResNet-18 from scratch, 32x32 inputs, CPU in
# a few minutes. The README's main job.
from mmengine.config import read_base
from mmengine.hooks import EMAHook
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_cosine_digits import *
    from ._base_.digits import *

model = dict(type=ImageClassifier, backbone='eca_resnet18', num_classes=num_classes, label_smoothing=0.1)
optim_wrapper.optimizer.update(lr=2e-3, weight_decay=0.05)
# EMA of the weights, evaluated in their place. A from-scratch run this short changes too fast for a long
# average: a short horizon (about 14 steps), from the third epoch on.
custom_hooks.append(dict(type=EMAHook, momentum=0.05, begin_epoch=2, priority='ABOVE_NORMAL'))
default_hooks.checkpoint.update(interval=2)
default_hooks.logger.update(interval=10)
