# Smoke run of the diffusion stack, step 2: RelaCtrl on the frozen base of pixart_tiny_synthetic_pairs.py (the
# official placement: control blocks after base blocks [0, 2..9, 18, 19] of the 28, TDSM group counts
# [6, 2, 6, 4, 2, 2, 4, 4, 6, 6, 6], widths multiples of 32). The base is read from the base run's work dir when
# training starts (ControlledDiffusionModel.init_weights); building the model does not need it. Validation samples
# with and without the control from the same noise: control_f1 vs base_control_f1.
#   python tools/train.py configs/diffusion/relactrl_pixart_tiny_synthetic_pairs.py   (after step 1; a few minutes)
from mmengine.config import read_base
from visionattn.heads.diffusion.dit import PixArt
from visionattn.heads.diffusion.relactrl import RELACTRL_CONTROL_INDICES, RELACTRL_GROUP_COUNTS, RelaCtrlPixArt
from visionattn.heads.diffusion.task import ControlledDiffusionModel

with read_base():
    from ._base_.synthetic_pairs_smoke import *

base = dict(type=PixArt, input_size=img_size, patch_size=2, in_channels=3, hidden_size=192, depth=28,
            num_heads=6, caption_channels=0, num_classes=num_classes, class_dropout_prob=0.1, pred_sigma=False)
model = dict(type=ControlledDiffusionModel,
             denoiser=dict(type=RelaCtrlPixArt, base=base, control_indices=RELACTRL_CONTROL_INDICES,
                           group_counts=RELACTRL_GROUP_COUNTS, inference_seed=0,
                           base_checkpoint='work_dirs/pixart_tiny_synthetic_pairs'),
             prediction_type=prediction_type, sampler='dpm_solver', num_inference_steps=20,
             clip_sample=True, guidance_scale=1.0, compare_base=True)  # pixel space: x0 clipped as in DDPM
max_iters = 2000
train_cfg.update(max_iters=max_iters, val_interval=max_iters)
