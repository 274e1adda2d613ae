# BiFormer-S on ImageNet-1k at the official recipe: see configs/classification/_base_/biformer_in1k.py for the
# sources and the gaps. Drop path 0.15, from the official README.md.
from mmengine.config import read_base

with read_base():
    from ._base_.biformer_in1k import *

model.update(backbone='biformer_s', backbone_kwargs=dict(drop_path_rate=0.15))
train_dataloader.update(batch_size=128)
