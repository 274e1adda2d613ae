# PATNet-T0 on ImageNet-1k at the authors' PartialNet recipe: see configs/classification/_base_/patnet_in1k.py for
# the sources and the gaps. From cfg/PartialNet_t0.yaml: wd 0.005, drop path 0.0, mixup 0.05,
# no RandAugment, no clipping, lr 0.004 at batch 256.
from mmengine.config import read_base

with read_base():
    from ._base_.patnet_in1k import *

model.update(backbone='patnet_t0', mixup=dict(mixup, mixup_alpha=0.05), backbone_kwargs=dict(drop_path_rate=0.0))
optim_wrapper.optimizer.update(weight_decay=0.005)
train_dataloader.update(batch_size=64)
