# Focus-DETR's optimisation (huawei-noah/noah-research Focus-DETR configs/focus_detr_r50_4scale_12ep.py with
# detrex's configs/common/coco_schedule.py): AdamW lr 1e-4, betas (0.9, 0.999), weight decay 1e-4, the backbone's
# lr x 0.1, gradient clipping at max-norm 0.1, 16 images a step (8 GPUs x 2; --auto-scale-lr rescales the lr for
# another total), no warm-up, lr x 0.1 once. The official schedules count iterations of 16 images: 12 epochs =
# 90k iterations with the decay at epoch 11; 24 epochs = 180k and 36 epochs = 270k iterations, both decaying at
# epoch 20 (lr_multiplier_24_36ep). Here they are epochs of COCO train2017, as mmdet's DINO configs write them.
from mmengine.optim import MultiStepLR, OptimWrapper
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

max_epochs = 12
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}),  # network.backbone.*
)
param_scheduler = [dict(type=MultiStepLR, begin=0, end=max_epochs, by_epoch=True, milestones=[11], gamma=0.1)]
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
auto_scale_lr = dict(base_batch_size=16, enable=False)
