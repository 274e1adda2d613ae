# BiFormer's Semantic FPN ADE20K schedule (semantic_segmentation/configs/ade20k/sfpn.biformer_small.py, after
# UniFormer's fpn_seg): mmseg's 160k-iteration, 4-GPU recipe halved for 8 GPUs x 4 images - AdamW lr 2e-4
# (1e-4 x 2), weight decay 1e-4, 1,000 iterations of linear warm-up from 0.1 x lr, cosine decay to 1e-8 x lr at
# 80k iterations. Trained in fp16 (--amp here).
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

max_iters = 80000
warmup_iters = 1000
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type=LinearLR, start_factor=0.1, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=CosineAnnealingLR, eta_min_ratio=1e-8, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=4000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
auto_scale_lr = dict(base_batch_size=32, enable=False)
