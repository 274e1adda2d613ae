# DiT-XL/2 at 256 px on ImageNet-1k (Peebles & Xie 2023; facebookresearch/DiT train.py): 675M parameters, latent
# diffusion in sd-vae-ft-ema's 32x32x4 space, AdamW lr 1e-4 without weight decay, global batch 256, 400K steps,
# class dropout 0.1, random flips, EMA 0.9999; FID-50K sampling uses 250 DDPM steps with guidance 1.5.
# Differences: the variance channels (learn_sigma) get no VLB loss here; the paper's FID is not computed offline.
# Needs ImageNet under data/imagenet (class folders) and the VAE from the hub ('stabilityai/sd-vae-ft-ema').
from mmengine.config import read_base
from mmengine.optim import OptimWrapper
from torch.optim import AdamW
from visionattn.heads.diffusion.dit import dit_xl_2

with read_base():
    from ._base_.imagenet_latent_256 import *

model.update(denoiser=dict(type=dit_xl_2, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True,
                           class_dropout_prob=0.1))
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-4, weight_decay=0.0))
