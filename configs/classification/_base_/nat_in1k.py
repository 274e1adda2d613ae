# NAT and DiNAT on ImageNet-1k, as the official run trains them (timm train.py with a per-model YAML).
# Source: SHI-Labs/Neighborhood-Attention-Transformer @d334f5b, classification/configs/{nat,dinat}_{mini,tiny,small,
# base}.yml (lr 1e-3, warmup_lr 1e-6, min_lr 5e-6, 300 epochs + 10 cooldown, 20 warm-up, batch 128 per GPU,
# cosine per iteration (sched_epochwise False), wd 0.05) and the defaults of classification/train.py (AdamW
# betas 0.9/0.999 eps 1e-8, clip-grad 5.0 norm, rand-m9-mstd0.5-inc1, reprob 0.25 'pixel', mixup 0.8, cutmix 1.0,
# switch 0.5, smoothing 0.1, train interpolation 'random', eval crop 0.875, no EMA, no repeated augmentation);
# drop path per variant from the model definitions in classification/{nat,dinat}.py.
# No config for dinat_large(_384): the official configs/dinat_large.yml is a 30-epoch fine-tune of ImageNet-22k
# weights (lr 5e-5, linear schedule, batch 64 per GPU, no mixup/cutmix), not an ImageNet-1k recipe.
# The script does not rescale the lr: 1e-3 is for 128 x the GPU count. 8 GPUs (batch 1024, Swin's) is the paper's
# setting and is not written in the repo: unverified here.
# Data as the official run (train.py with timm @9d6aad4, requirements.txt): timm's create_loader transforms
# (rand-m9-mstd0.5-inc1, train interpolation 'random': bilinear or bicubic per image, colour jitter 0.4, off under
# RandAugment), random erasing 0.25 'pixel' x1 on the normalised batch on the device (timm's prefetcher, on by
# default), no repeated augmentation (--aug-repeats 0), one seed per process (random_seed(seed, rank)).
# Still different: timm 1.0 in place of that commit; fp16 autocast (yml `amp: True`) is --amp, which picks bf16
# where the GPU has it (tools/train.py).
# Schedule: as timm's, the cosine runs from step 0 under the linear warm-up (mmengine chains the two), so after
# the warm-up the lr is timm's to 4e-5 x lr; during it, mmengine's ramp is up to 5% ahead of timm's.
# Weight decay follows the official run: timm 0.5's optimizer ignores NAT's no_weight_decay_keywords, so the
# relative position biases (attn.rpb) are decayed; only 1-D parameters (norms, biases, layer scales) are not.
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
    optimizer=dict(type=AdamW, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=5e-6, by_epoch=True, begin=0, end=cosine_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024, enable=False)

# Recipe parts, put into the model and the pipelines at the end of this file.
label_smoothing = 0.1
mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')
train_augment = dict(auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4, interpolation='random')
random_erasing = dict(probability=0.25, mode='pixel', max_count=1)
train_sampler = dict(type=DefaultSampler, shuffle=True)
eval_crop_pct = 0.875
randomness = dict(seed=0, deterministic=False, diff_rank_seed=True)  # timm's random_seed(seed, rank)

# The recipe parts in the model and the pipelines; each variant config names its backbone and batch size and edits
# what its variant changes.
model = dict(type=ImageClassifier, num_classes=num_classes, label_smoothing=label_smoothing, mixup=mixup,
             random_erasing=random_erasing)
train_dataloader.update(sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment)
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
