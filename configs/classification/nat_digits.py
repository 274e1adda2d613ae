# Smoke run of the NAT/DiNAT family on the embedded digits: nat_mini from scratch at 32x32 on the CPU.
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_cosine_digits import *
    from ._base_.digits import *

model = dict(type=ImageClassifier, backbone='nat_mini', num_classes=num_classes, label_smoothing=0.1)
optim_wrapper.paramwise_cfg.update(custom_keys={'rpb': dict(decay_mult=0.0)})  # NAT's relative-position bias: no decay
default_hooks.checkpoint.update(interval=2)
default_hooks.logger.update(interval=10)
