# Smoke run of the diffusion stack, step 1: the base. A label-conditioned PixArt-alpha with the official 28-block
# layout at width 192 (6 heads), patch 2, in pixel space on the 32x32 synthetic pairs (3 classes), v-prediction loss
# (see the base recipe) with DiT's linear noise schedule, 20-step DPM-Solver++ sampling. Validation reports the
# edge-F1 of its samples against the dataset's control edges (the uncontrolled baseline) and PSNR/SSIM against the
# paired images.
#   python tools/train.py configs/diffusion/pixart_tiny_synthetic_pairs.py      (H200: a few minutes)
from mmengine.config import read_base
from visionattn.heads.diffusion.dit import PixArt
from visionattn.heads.diffusion.task import DiffusionModel

with read_base():
    from ._base_.synthetic_pairs_smoke import *

denoiser = dict(type=PixArt, input_size=img_size, patch_size=2, in_channels=3, hidden_size=192, depth=28,
                num_heads=6, caption_channels=0, num_classes=num_classes, class_dropout_prob=0.1, pred_sigma=False)
model = dict(type=DiffusionModel, denoiser=denoiser, prediction_type=prediction_type, sampler='dpm_solver',
             num_inference_steps=20, clip_sample=True, guidance_scale=1.0)  # pixel space: x0 clipped as in DDPM
max_iters = 3000
train_cfg.update(max_iters=max_iters, val_interval=max_iters)
