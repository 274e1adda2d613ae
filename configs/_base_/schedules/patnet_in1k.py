# PATNet (Huang et al., arXiv 2503.03148) on ImageNet-1k at the recipe of the authors' code, haiduo/PartialNet
# @679cfc0 (PyTorch Lightning + timm), which is FasterNet's recipe (configs/_base_/schedules/fasternet_in1k.py).
# Source: cfg/PartialNet_{t0,t1,t2,s,m,l}.yaml (AdamW, 300 epochs, cosine with 20 warm-up epochs from 1e-6 and
# min_lr 1e-5, batch_size 256, lr 4e-3 (T0-S) or 2e-3 (M, L), and per variant: weight decay, drop path,
# RandAugment magnitude, mixup alpha, gradient clipping; cutmix 1.0, switch 0.5, smoothing 0.1, reprob 0, no colour
# jitter, bicubic, eval resize 224/0.9 and centre crop, fp16, DPConv off), README.md (`--gpus [0,1,2,3]`),
# data/data_api.py (batch_size is the total batch, divided over the GPUs: 4 x 64) and models/model_api.py
# (pl_bolts LinearWarmupCosineAnnealingLR stepped once per epoch, no lr scaling).
# Unverified, and worth knowing: the YAMLs' lr lines are commented "for bs=4096" / "for bs=2048", as in FasterNet's
# YAMLs, but their batch_size is 256 and train_test.py has no batch option, so the code as released trains at 256
# with those lrs. These configs follow the code (lr 4e-3 or 2e-3 at 256); for FasterNet's reading of the comments
# use 8 GPUs x 512 (T0-S) or x 256 (M, L) at the same lr, without --auto-scale-lr.
# Quirk kept: model_api.py hands timm's create_optimizer `self.parameters()`, not the module, so weight decay
# applies to every parameter, norms, biases and iRPE tables included: no paramwise_cfg here.
# Not available in this engine:
# - the multi-scale schedule (cfg `multi_scale: 192_280`: 192x192 crops before epoch 280, 224 after): 224 throughout;
# - RandAugment (rand-m3/m5/m7-mstd0.5-inc1 per variant): the TrivialAugment-like ops stand in, without magnitudes.
# The variant configs set the per-variant values; these defaults are T0's.
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from torch.optim import AdamW

warmup_epochs = 20
max_epochs = 300
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=4e-3, weight_decay=0.005, betas=(0.9, 0.999), eps=1e-8),
)
# pl_bolts' warm-up reaches the lr at epoch 19, as mmengine's LinearLR does; its cosine then spans epochs 20-300.
param_scheduler = [
    dict(type=LinearLR, start_factor=2.5e-4, by_epoch=True, begin=0, end=warmup_epochs),
    dict(type=CosineAnnealingLR, eta_min=1e-5, by_epoch=True, begin=warmup_epochs, end=max_epochs),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=256, enable=False)

# Recipe parts that the variant configs put into the model and the pipelines.
label_smoothing = 0.1
mixup = dict(mixup_alpha=0.05, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')
train_augment = dict(auto_augment=None, random_erasing=0.0, interpolation='bicubic')
eval_crop_pct = 0.9
