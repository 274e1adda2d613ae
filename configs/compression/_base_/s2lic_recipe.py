# S2LIC (paper size: N=192, M=320) trained with CompressAI's usual recipe: random 256x256 crops, batch 16, Adam 1e-4
# for the transforms and a separate Adam 1e-3 for the entropy bottleneck's aux loss (quantiles), gradient clipping
# at 1.0, iteration based. The S2LIC paper's training set and schedule were not retrieved: the 1M iterations with a
# x0.1 drop at 900k are a common learned-compression schedule, not a paper figure. Evaluation codes real bitstreams.
from mmengine.config import read_base
from mmengine.optim import MultiStepLR, OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import Adam
from visionattn.heads.compression.s2lic import build_s2lic
from visionattn.heads.compression.task import CompressionOptimWrapperConstructor, ImageCompressor

with read_base():
    from ..._base_.default_runtime import *
    from .skimage_photos import *

model = dict(type=ImageCompressor, codec=dict(type=build_s2lic, size='paper'), lmbda=0.013, metric='mse')
max_iters = 1000000
optim_wrapper = dict(
    constructor=CompressionOptimWrapperConstructor,
    main=dict(type=OptimWrapper, optimizer=dict(type=Adam, lr=1e-4), clip_grad=dict(max_norm=1.0)),
    aux=dict(type=OptimWrapper, optimizer=dict(type=Adam, lr=1e-3)),
)
param_scheduler = dict(main=[dict(type=MultiStepLR, by_epoch=False, milestones=[900000], gamma=0.1)], aux=[])
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=50000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
env_cfg.update(cudnn_benchmark=False)  # the codec's encoder and decoder need identical convolution algorithms
default_hooks.checkpoint.update(by_epoch=False, interval=50000, max_keep_ckpts=2)
default_hooks.logger.update(interval=100)
log_processor.update(by_epoch=False)
