# The detection smoke run sized for one GPU (the H200 run): the same tiny Focus-DETR and synthetic COCO shapes
# as focus_detr_r18_synthetic_shapes.py (the CPU smoke), at batch 8 for 60 epochs of 32 iterations (1,920 in all),
# lr 4e-4 dropped 10x at epoch 50, COCO box AP every 10 epochs. On an H200 that shared its time with another training
# this reached AP 0.286 / AP50 0.478 after 50 epochs in 6.5 minutes (docs/benchmarks/focus_detr_smoke_h200.md).
#   python tools/train.py configs/detection/focus_detr_r18_synthetic_shapes_h200.py
from mmengine.config import read_base

with read_base():
    from .focus_detr_r18_synthetic_shapes import *

max_epochs = 60
train_dataloader.update(batch_size=8, num_workers=4, persistent_workers=True)
val_dataloader.update(num_workers=2)
test_dataloader = val_dataloader
param_scheduler = [dict(type=MultiStepLR, begin=0, end=max_epochs, by_epoch=True, milestones=[50], gamma=0.1)]
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=10)
default_hooks.logger.update(interval=32)
