# The digits smoke schedule: AdamW with one warm-up epoch and a cosine decay over six epochs (264 steps of 32).
from mmengine.config import read_base

with read_base():
    from .adamw_cosine import *

max_epochs = 6
warmup_epochs = 1
train_cfg.update(max_epochs=max_epochs, val_interval=2)
param_scheduler[0].update(end=warmup_epochs)
param_scheduler[1].update(begin=warmup_epochs, end=max_epochs)
auto_scale_lr.update(base_batch_size=32)
