# PATNet (Huang et al., arXiv 2503.03148) on ImageNet-1k at the recipe of the authors' code, haiduo/PartialNet
# @679cfc0 (PyTorch Lightning + timm), which is FasterNet's recipe (configs/classification/_base_/fasternet_in1k.py).
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
# Data: timm's create_transform as FasterNet's (data/custom_imagenet_data.py build_transform; requirements.txt pins
# neither timm nor Lightning), with the same multi-scale schedule and the same Lightning reading (fasternet_in1k.py).
# Seeds: train_test.py calls seed_everything(42) in every process, so all processes share one random stream
# (Mixup/CutMix and drop-path draws alike): diff_rank_seed off here, unlike FasterNet.
# Everything else, including what still differs, is FasterNet's: see fasternet_in1k.py.
from mmengine.config import read_base

with read_base():
    from .fasternet_in1k import *

auto_scale_lr = dict(base_batch_size=256, enable=False)  # the lrs below are for the released code's batch of 256
randomness = dict(seed=0, deterministic=False, diff_rank_seed=False)  # seed_everything(42) on every rank
