# MambaOut-Kobe on ImageNet-1k at the official recipe: see configs/classification/_base_/mambaout_in1k.py for
# the sources and the gaps. Drop path 0.025, from scripts/train_mambaout_kobe.sh;
# the released weights reach 80.0% top-1 (README.md).
from mmengine.config import read_base

with read_base():
    from ._base_.mambaout_in1k import *

model.update(backbone='mambaout_kobe', backbone_kwargs=dict(drop_path_rate=0.025))
train_dataloader.update(batch_size=512)
