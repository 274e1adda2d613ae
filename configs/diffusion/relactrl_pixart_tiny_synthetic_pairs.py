# Smoke run of the diffusion stack, step 2: RelaCtrl on the frozen base of pixart_tiny_synthetic_pairs.py (the
# official placement: control blocks after base blocks [0, 2..9, 18, 19] of the 28, TDSM group counts
# [6, 2, 6, 4, 2, 2, 4, 4, 6, 6, 6], widths multiples of 32). The base is read from the base run's work dir when
# training starts (ControlledDiffusionModel.init_weights); building the model does not need it. Validation samples
# with and without the control from the same noise: control_f1 vs base_control_f1.
#   python tools/train.py configs/diffusion/relactrl_pixart_tiny_synthetic_pairs.py   (after step 1; a few minutes)
from mmengine.config import read_base
from mmengine.optim import LinearLR, OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW
from visionattn.heads.diffusion.dit import PixArt
from visionattn.heads.diffusion.relactrl import RELACTRL_CONTROL_INDICES, RELACTRL_GROUP_COUNTS, RelaCtrlPixArt
from visionattn.heads.diffusion.task import ControlledDiffusionModel

with read_base():
    from .._base_.default_runtime import *
    from ._base_.synthetic_pairs_32 import *

base = dict(type=PixArt, input_size=img_size, patch_size=2, in_channels=3, hidden_size=192, depth=28,
            num_heads=6, caption_channels=0, num_classes=num_classes, class_dropout_prob=0.1, pred_sigma=False)
model = dict(type=ControlledDiffusionModel,
             denoiser=dict(type=RelaCtrlPixArt, base=base, control_indices=RELACTRL_CONTROL_INDICES,
                           group_counts=RELACTRL_GROUP_COUNTS, inference_seed=0,
                           base_checkpoint='work_dirs/pixart_tiny_synthetic_pairs'),
             sampler='dpm_solver', num_inference_steps=20, clip_sample=True,  # pixel space, as in DDPM
             guidance_scale=1.0, compare_base=True)
max_iters = 2000
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=3e-4, weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0))
param_scheduler = [dict(type=LinearLR, start_factor=0.01, by_epoch=False, begin=0, end=200)]
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
default_hooks.checkpoint.update(by_epoch=False, interval=1000, max_keep_ckpts=1)
default_hooks.logger.update(interval=50)
log_processor.update(by_epoch=False)
