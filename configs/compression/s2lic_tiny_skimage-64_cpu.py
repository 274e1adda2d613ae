# CPU smoke run of the compression stack (about a minute on 2 cores): S2LIC's tiny preset (N=32, M=40, window 4) on
# 64x64 crops of the training photos, 40 iterations, then a real-bitstream evaluation on the held-out photos.
#   python tools/train.py configs/compression/s2lic_tiny_skimage-64_cpu.py
#   python tools/test.py configs/compression/s2lic_tiny_skimage-64_cpu.py \
#       work_dirs/s2lic_tiny_skimage-64_cpu/iter_40.pth
from mmengine.config import read_base

with read_base():
    from ._base_.s2lic_recipe import *

model.update(codec=dict(type=build_s2lic, size='tiny'))
max_iters = 40
train_dataloader.update(batch_size=4, num_workers=0, persistent_workers=False)
train_dataloader.dataset.update(crop_size=64, length=1000)
val_dataloader.update(num_workers=0)
test_dataloader = val_dataloader
param_scheduler = dict(main=[], aux=[])
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=max_iters)
default_hooks.checkpoint.update(interval=max_iters, max_keep_ckpts=1)
default_hooks.logger.update(interval=10)
