# FasterNet-M on ImageNet-1k at the official recipe: see configs/classification/_base_/fasternet_in1k.py for
# the sources and the gaps. From cfg/fasternet_m.yaml: wd 0.05, drop path 0.2, mixup 0.5,
# rand-m7-mstd0.5-inc1, grad norm clipped at 1.0, lr 0.002 at batch 2048.
from mmengine.config import read_base

with read_base():
    from ._base_.fasternet_in1k import *

model.update(backbone='fasternet_m', mixup=dict(mixup, mixup_alpha=0.5), backbone_kwargs=dict(drop_path_rate=0.2))
optim_wrapper.optimizer.update(lr=0.002, weight_decay=0.05)
param_scheduler[0].update(start_factor=0.0005)  # warm-up from 1e-6
auto_scale_lr.update(base_batch_size=2048)
optim_wrapper.update(clip_grad=dict(max_norm=1.0))
train_dataloader.update(batch_size=256)
train_dataloader.dataset.pipeline.update(auto_augment='rand-m7-mstd0.5-inc1')
