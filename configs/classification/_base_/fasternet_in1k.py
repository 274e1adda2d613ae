# FasterNet (Chen et al., CVPR 2023; timm's fasternet_*) on ImageNet-1k, as the official run trains it
# (PyTorch Lightning + timm 0.6.5).
# Source: JierunChen/FasterNet @e8fba44: cfg/fasternet_{t0,t1,t2,s,m,l}.yaml (AdamW, 300 epochs, cosine with 20
# warm-up epochs from 1e-6 to the lr and min_lr 1e-5, lr 4e-3 "for bs=4096" (T0-S) or 2e-3 "for bs=2048" (M, L),
# and per variant: weight decay, drop path, RandAugment magnitude, mixup alpha, gradient clipping; cutmix 1.0,
# switch 0.5, smoothing 0.1, reprob 0, no colour jitter, bicubic, eval resize 224/0.9 and centre crop, fp16),
# README.MD (T0 on one 8-GPU node with -b 4096; -b is the total batch: data/data_api.py divides it by the GPU
# count) and models/model_api.py (pl_bolts LinearWarmupCosineAnnealingLR stepped once per epoch, no lr scaling).
# Quirk kept: model_api.py hands timm's create_optimizer `self.parameters()`, not the module, so weight decay
# applies to every parameter, norms and biases included: no paramwise_cfg here.
# Data as the official run: timm's create_transform (data/custom_imagenet_data.py build_imagenet_transform, timm
# 0.6.5: per-variant RandAugment string, colour jitter 0, bicubic, no random erasing), the multi-scale schedule of
# the YAMLs (`multi_scale: 192_280`: 192x192 crops before epoch 280, img_size from it) and Lightning's
# DistributedSampler (plain shuffling); the classification code never calls seed_everything, so every process draws
# its own random stream (diff_rank_seed here).
# Still different:
# - as released, Lightning 1.6.5 builds the train dataloader once (reload_dataloaders_every_n_epochs is not set), so
#   a run started from epoch 0 keeps the 192 dataset for all 300 epochs; these configs follow the YAMLs' stated
#   schedule (192, then 224 from epoch 280); set multi_scale=None in train_augment for 224 throughout;
# - precision 16 (fp16 autocast) is --amp, which picks bf16 where the GPU has it (tools/train.py);
# - timm 1.0 in place of 0.6.5.
# The variant configs set the per-variant values; these defaults are T0's.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from torch.optim import AdamW
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from ..._base_.default_runtime import *
    from .imagenet import *

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
auto_scale_lr = dict(base_batch_size=4096, enable=False)

# Recipe parts, put into the model and the pipelines at the end of this file.
label_smoothing = 0.1
mixup = dict(mixup_alpha=0.05, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')
train_augment = dict(auto_augment=None, color_jitter=0, interpolation='bicubic', multi_scale=(192, 280))
random_erasing = None  # reprob 0
train_sampler = dict(type=DefaultSampler, shuffle=True)
eval_crop_pct = 0.9
randomness = dict(seed=0, deterministic=False, diff_rank_seed=True)  # unseeded: one stream per process

# The recipe parts in the model and the pipelines; each variant config names its backbone and batch size and edits
# what its variant changes.
model = dict(type=ImageClassifier, num_classes=num_classes, label_smoothing=label_smoothing, mixup=mixup,
             random_erasing=random_erasing)
train_dataloader.update(sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment)
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
