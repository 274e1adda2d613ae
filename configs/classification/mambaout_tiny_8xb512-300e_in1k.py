# MambaOut-Tiny on ImageNet-1k at the official recipe: see configs/classification/_base_/mambaout_in1k.py for
# the sources and the gaps. Drop path 0.2, from scripts/train_mambaout_tiny.sh;
# the released weights reach 82.7% top-1 (README.md).
from mmengine.config import read_base

with read_base():
    from ._base_.mambaout_in1k import *

model.update(backbone='mambaout_tiny', backbone_kwargs=dict(drop_path_rate=0.2))
train_dataloader.update(batch_size=512)
