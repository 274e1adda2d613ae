# The UPerNet ADE20K schedule of BiFormer (semantic_segmentation/configs/ade20k/upernet.biformer_small.py, after
# Swin/UniFormer) and NAT (segmentation/configs/nat/upernet_nat_*_512x512_160k_ade20k.py): AdamW lr 6e-5,
# betas (0.9, 0.999), weight decay 0.01 (none on norms), 1,500 iterations of linear warm-up from 1e-6 x lr, then
# poly decay (power 1) to 0 at 160k iterations; 8 GPUs x 2 images. Both repos trained in fp16 (--amp here).
from mmengine.optim import LinearLR, OptimWrapper, PolyLR
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

max_iters = 160000
warmup_iters = 1500
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-6, by_epoch=False, begin=0, end=warmup_iters),
    dict(type=PolyLR, power=1.0, eta_min=0.0, by_epoch=False, begin=warmup_iters, end=max_iters),
]
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=16000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
auto_scale_lr = dict(base_batch_size=16, enable=False)
