# Smoke run of LaMamba-Diff: a label-conditioned LaMamba-Diff U-Net, patch 2, width 32 (stages 32-64-128-128, one
# block per encoder stage, bottleneck 1, 4 heads, window 4, d_state 1, snake scans) in pixel space on the 32x32 pairs
# (3 classes), v-prediction loss (see the base recipe) with DiT's linear noise schedule, 20-step DPM-Solver++
# sampling; validation reports the samples' edge-F1 against the dataset's edges and PSNR/SSIM against the paired images.
#   python tools/train.py configs/diffusion/lamamba_diff_tiny_synthetic_pairs.py
from mmengine.config import read_base
from visionattn.heads.diffusion.lamamba_diff import LaMambaDiff
from visionattn.heads.diffusion.task import DiffusionModel

with read_base():
    from ._base_.synthetic_pairs_smoke import *

# Patch 2: a 4x4 patch of 3 channels (48 values) through a 32-wide embedding left 16 of its noise directions
# unpredictable (noise loss stuck near 0.37 at every t on an H100, docs/benchmarks/diffusion_h100_s12.md).
denoiser = dict(type=LaMambaDiff, input_size=img_size, patch_size=2, in_channels=3, embed_dim=32,
                depths=(1, 1, 1, 1), bottleneck_depth=1, num_heads=4, window_size=4, num_classes=num_classes,
                class_dropout_prob=0.1, learn_sigma=False)
model = dict(type=DiffusionModel, denoiser=denoiser, prediction_type=prediction_type, sampler='dpm_solver',
             num_inference_steps=20, clip_sample=True, guidance_scale=1.0)  # pixel space: x0 clipped as in DDPM
max_iters = 4000
train_cfg.update(max_iters=max_iters, val_interval=max_iters)
