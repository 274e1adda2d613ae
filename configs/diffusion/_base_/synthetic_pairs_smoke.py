# The smoke-run recipe of the diffusion stack on the 32x32 synthetic pairs (synthetic_pairs_32.py), in pixel space:
# AdamW lr 3e-4 without weight decay, gradient norm clipped at 1.0, a linear warm-up from 1% over 200 iterations, an
# EMA of the weights, an iteration-based loop that validates once at the end, checkpoints every 1000 iterations (the
# last one kept).
# Each config sets its own max_iters and the loop's length with it.
from mmengine.config import read_base
from mmengine.hooks import EMAHook
from mmengine.optim import LinearLR, OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW

with read_base():
    from ..._base_.default_runtime import *
    from .synthetic_pairs_32 import *

max_iters = 3000
# What the denoisers predict. v (Salimans & Ho 2022), not the noise that DiT and PixArt predict: in pixel space at
# 32x32 a noise prediction's x0 estimate at large t is its error magnified up to 1/sqrt(a_t) ~ 60-150x, and the smoke
# bases sampled saturated speckles (docs/benchmarks/diffusion_h100_s12.md). The control run shares its base's value.
prediction_type = 'v_prediction'
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=3e-4, weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type=LinearLR, start_factor=0.01, by_epoch=False, begin=0, end=200)]
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
# Samples come from an exponential moving average of the weights, as DiT's and PixArt's do (0.9999 over 400K steps
# there). The smoke runs last hundreds to thousands of steps, so the average's weight on the newest step starts at 1
# and falls as 10 / (10 + step) to 1e-3 (mmengine's MomentumAnnealingEMA): about the last tenth of the run is averaged.
# A fixed 1e-3 drew LaMamba-Diff's samples after 400 steps from weights still 67% initial
# (docs/benchmarks/diffusion_h100_s13.md). A checkpoint's state_dict holds the averaged weights (mmengine swaps them in
# when saving), so tools/test.py and the control run's base load those.
custom_hooks.append(dict(type=EMAHook, ema_type='MomentumAnnealingEMA', momentum=1e-3, gamma=10, update_buffers=True))
default_hooks.checkpoint.update(by_epoch=False, interval=1000, max_keep_ckpts=1)
default_hooks.logger.update(interval=50)
log_processor.update(by_epoch=False)
