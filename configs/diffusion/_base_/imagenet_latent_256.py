# Class-conditional latent diffusion on ImageNet-1k at 256 px, as DiT's train.py runs it (and LaMamba-Diff's copy of
# it): Stable Diffusion's VAE (32x32x4 latents; each config names its VAE weights), class folders under data/imagenet,
# random flips, global batch 256 (8 x 32), 400K steps, EMA 0.9999, no lr schedule; FID-style sampling with 250 DDPM
# steps and guidance 1.5 (the offline metric is PSNR/SSIM against the paired image, not FID).
from diffusers import AutoencoderKL
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.hooks import EMAHook
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from visionattn.heads.diffusion.data import ImageFolderCannyDataset
from visionattn.heads.diffusion.evaluation import SampleQualityMetric
from visionattn.heads.diffusion.task import DiffusionModel, diffusion_collate

with read_base():
    from ..._base_.default_runtime import *

sd_vae = dict(type=AutoencoderKL, from_pretrained='stabilityai/sd-vae-ft-ema',
              block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
              up_block_types=('UpDecoderBlock2D',) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
model = dict(type=DiffusionModel, pretrained=True, vae=sd_vae, sampler='ddpm', num_inference_steps=250,
             guidance_scale=1.5)
train_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type=InfiniteSampler, shuffle=True),
    collate_fn=dict(type=diffusion_collate),
    dataset=dict(type=ImageFolderCannyDataset, root='data/imagenet/train', img_size=256, flip=True),
)
val_dataloader = dict(
    batch_size=32, num_workers=8,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=diffusion_collate),
    dataset=dict(type=ImageFolderCannyDataset, root='data/imagenet/val', img_size=256),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=SampleQualityMetric)
test_evaluator = val_evaluator
max_iters = 400_000
param_scheduler = []
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=50_000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
custom_hooks.append(dict(type=EMAHook, momentum=1e-4, update_buffers=True))
default_hooks.checkpoint.update(by_epoch=False, interval=50_000, max_keep_ckpts=2)
default_hooks.logger.update(interval=100)
log_processor.update(by_epoch=False)
