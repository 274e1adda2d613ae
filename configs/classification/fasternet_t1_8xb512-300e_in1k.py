# FasterNet-T1 on ImageNet-1k at the official recipe: see configs/classification/_base_/fasternet_in1k.py for
# the sources and the gaps. From cfg/fasternet_t1.yaml: wd 0.01, drop path 0.02, mixup 0.1,
# rand-m3-mstd0.5-inc1, no clipping, lr 0.004 at batch 4096.
from mmengine.config import read_base

with read_base():
    from ._base_.fasternet_in1k import *

model.update(backbone='fasternet_t1', mixup=dict(mixup, mixup_alpha=0.1), backbone_kwargs=dict(drop_path_rate=0.02))
optim_wrapper.optimizer.update(weight_decay=0.01)
train_dataloader.update(batch_size=512)
train_dataloader.dataset.pipeline.update(auto_augment='rand-m3-mstd0.5-inc1')
