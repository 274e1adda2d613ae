# PATNet-L on ImageNet-1k at the authors' PartialNet recipe: see configs/classification/_base_/patnet_in1k.py for
# the sources and the gaps. From cfg/PartialNet_l.yaml: wd 0.05, drop path 0.3, mixup 0.7,
# rand-m7-mstd0.5-inc1, grad norm clipped at 0.01, lr 0.002 at batch 256.
from mmengine.config import read_base

with read_base():
    from ._base_.patnet_in1k import *

model.update(backbone='patnet_l', mixup=dict(mixup, mixup_alpha=0.7), backbone_kwargs=dict(drop_path_rate=0.3))
optim_wrapper.optimizer.update(lr=0.002, weight_decay=0.05)
param_scheduler[0].update(start_factor=0.0005)  # warm-up from 1e-6
optim_wrapper.update(clip_grad=dict(max_norm=0.01))
train_dataloader.update(batch_size=64)
train_dataloader.dataset.pipeline.update(auto_augment='rand-m7-mstd0.5-inc1')
