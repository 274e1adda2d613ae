# MambaOut (Yu & Wang, 2024; timm's mambaout_*) on ImageNet-1k, as the official run trains it (timm's train.py).
# Source: yuweihao/MambaOut @9f2f234: scripts/train_mambaout_{femto,kobe,tiny,small,base}.sh (batch 4096 = 8 GPUs x
# 128 x 4 gradient-accumulation steps, AdamW lr 4e-3, 20 warm-up epochs, drop path per variant) and train.py's
# defaults (wd 0.05, eps 1e-8, no gradient clipping, cosine with warmup_lr 1e-6 and min_lr 1e-5, 300 epochs + 10
# cooldown epochs at min_lr, which the loop runs, rand-m9-mstd0.5-inc1, reprob 0.25 'pixel', mixup 0.8, cutmix 1.0,
# switch 0.5, smoothing 0.1, train interpolation 'random', no EMA, no repeated augmentation); eval crop 1.0 from the
# model's default cfg (models/mambaout.py). The lr is not rescaled by the script: 4e-3 is for 4096.
# The lr steps once per epoch: timm 0.6.11 (the README's version) builds its cosine with t_in_epochs=True in
# create_scheduler; that is read from timm, not from this repo. The cosine runs from epoch 0 under the warm-up.
# Here 8 GPUs x 512 make the 4096 without accumulation (MambaOut has no BatchNorm, so the gradient is the same);
# with less memory, set optim_wrapper.accumulative_counts and lower the batch (auto_scale_lr then does not count
# the accumulation, so leave --auto-scale-lr off).
# Data as the official run (train.py, timm 0.6.11): timm's create_loader transforms (rand-m9-mstd0.5-inc1, train
# interpolation 'random', colour jitter 0.4, off under RandAugment), random erasing 0.25 'pixel' x1 on the
# normalised batch on the device (timm's prefetcher), no repeated augmentation, one seed per process
# (random_seed(seed, rank)). The scripts pass no --amp: train.py runs in fp32, so leave --amp off to match.
# Still different: timm 1.0 in place of 0.6.11; at 8 x 512 without accumulation Mixup/CutMix draws one lambda per
# 512 images, the official run one per 128-image micro-batch.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from torch.optim import AdamW
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from ..._base_.default_runtime import *
    from .imagenet import *

warmup_epochs = 20
cosine_epochs = 300
max_epochs = 310  # the 10 cooldown epochs at min_lr that timm's script appends
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=4e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)
param_scheduler = [
    dict(type=LinearLR, start_factor=2.5e-4, by_epoch=True, begin=0, end=warmup_epochs),
    dict(type=CosineAnnealingLR, eta_min=1e-5, by_epoch=True, begin=0, end=cosine_epochs),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=4096, enable=False)

# Recipe parts, put into the model and the pipelines at the end of this file.
label_smoothing = 0.1
mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')
train_augment = dict(auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='random')
random_erasing = dict(probability=0.25, mode='pixel', max_count=1)
train_sampler = dict(type=DefaultSampler, shuffle=True)
eval_crop_pct = 1.0
randomness = dict(seed=0, deterministic=False, diff_rank_seed=True)  # timm's random_seed(seed, rank)

# The recipe parts in the model and the pipelines; each variant config names its backbone and batch size and edits
# what its variant changes.
model = dict(type=ImageClassifier, num_classes=num_classes, label_smoothing=label_smoothing, mixup=mixup,
             random_erasing=random_erasing)
train_dataloader.update(sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment)
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
