# Smoke run of the segmentation stack on CPU: Semantic FPN on ECA-ResNet-18 (from scratch) over the synthetic
# shapes at 64x64, 4 classes, a poly schedule of 400 iterations of 8 images, mIoU every 100. A few minutes on CPU.
from mmengine.config import read_base
from mmengine.optim import LinearLR, OptimWrapper, PolyLR
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW
from visionattn.heads.segmentation.decoders import SemanticFPN
from visionattn.heads.segmentation.task import Segmentor

with read_base():
    from .._base_.default_runtime import *
    from ._base_.synthetic_shapes import *

model = dict(type=Segmentor, num_classes=num_classes,
             network=dict(type=SemanticFPN, backbone='eca_resnet18', num_classes=num_classes))
max_iters = 400
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-3, weight_decay=0.01))
param_scheduler = [
    dict(type=LinearLR, start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type=PolyLR, power=1.0, eta_min=0.0, by_epoch=False, begin=40, end=max_iters),
]
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=100)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
default_hooks.checkpoint.update(by_epoch=False, interval=100, max_keep_ckpts=2, save_best='mIoU')
default_hooks.logger.update(interval=10)
log_processor.update(by_epoch=False)
