# Focus-DETR R50 4-scale at the official 36-epoch schedule (270k iterations of 16 images; lr x 0.1 at epoch 20,
# detrex's lr_multiplier_24_36ep). The README reports 50.4 box AP on COCO val2017.
from mmengine.config import read_base

with read_base():
    from .._base_.default_runtime import *
    from ._base_.coco_detection import *
    from ._base_.focus_detr_4scale_r50 import *
    from ._base_.focus_detr_schedule import *

max_epochs = 36
param_scheduler = [dict(type=MultiStepLR, begin=0, end=max_epochs, by_epoch=True, milestones=[20], gamma=0.1)]
train_cfg.update(max_epochs=max_epochs)
default_hooks.checkpoint.update(interval=1, max_keep_ckpts=3, save_best='coco/bbox_mAP', rule='greater')
