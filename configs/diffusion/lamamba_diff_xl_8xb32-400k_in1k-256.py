# LaMamba-Diff-XL at 256 px on ImageNet-1k (Fu et al. 2024, arXiv:2408.02615; yunxiangfu2001/LaMamba-Diff train.py
# and configs/LaMamba-DIff-XL.yaml): the U-Net of LaMamba blocks (dims 320-640-1280-1280, depths 2-2-2-2, bottleneck 2,
# d_state 1, window 8, 8 heads), 652M parameters, latent diffusion in sd-vae-ft-mse's 32x32x4 space (train.py's
# default VAE), 1000 classes with class dropout 0.1, random flips, EMA 0.9999, global batch 256 (8 x 32).
# Optimiser as the official train.py: AdamW lr 1e-4 with torch's default weight decay 0.01 (DiT sets 0; LaMamba-Diff
# keeps the default). The repository states no iteration budget (train.py's default is 1400 epochs); 400K steps
# here, DiT-XL/2's schedule, for a like-for-like comparison. FID sampling (sample.py): 250 DDPM steps, guidance 1.5.
# Differences: the variance channels get no VLB loss here; FID is not computed offline.
# Needs ImageNet under data/imagenet (class folders) and the VAE from the hub ('stabilityai/sd-vae-ft-mse').
from mmengine.config import read_base
from mmengine.optim import OptimWrapper
from torch.optim import AdamW
from visionattn.heads.diffusion.lamamba_diff import lamamba_diff_xl

with read_base():
    from ._base_.imagenet_latent_256 import *

model.vae.update(from_pretrained='stabilityai/sd-vae-ft-mse')  # train.py's default VAE
model.update(denoiser=dict(type=lamamba_diff_xl, input_size=32, in_channels=4, num_classes=1000,
                           class_dropout_prob=0.1))
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-4, weight_decay=0.01))
