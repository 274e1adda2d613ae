# NAT-Base on ImageNet-1k at the official NAT recipe: see configs/classification/_base_/nat_in1k.py for
# the sources and the gaps. Drop path 0.5, as classification/nat.py of the official repo sets it.
from mmengine.config import read_base

with read_base():
    from ._base_.nat_in1k import *

model.update(backbone='nat_base', backbone_kwargs=dict(drop_path_rate=0.5))
train_dataloader.update(batch_size=128)
