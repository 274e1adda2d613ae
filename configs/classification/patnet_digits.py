# Smoke run of the PATNet family on the embedded digits: patnet_t0 from scratch at 32x32 on the CPU.
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_cosine_digits import *
    from ._base_.digits import *

model = dict(type=ImageClassifier, backbone='patnet_t0', num_classes=num_classes, label_smoothing=0.1)
optim_wrapper.paramwise_cfg.update(custom_keys={'rpe_table': dict(decay_mult=0.0)})  # PATNet's iRPE tables: no decay
default_hooks.checkpoint.update(interval=2)
default_hooks.logger.update(interval=10)
