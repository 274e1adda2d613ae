# DiT-XL/2 at 256 px on ImageNet-1k (Peebles & Xie 2023; facebookresearch/DiT train.py): 675M parameters, latent
# diffusion in sd-vae-ft-ema's 32x32x4 space, AdamW lr 1e-4 without weight decay, global batch 256, 400K steps,
# class dropout 0.1, random flips, EMA 0.9999; FID-50K sampling uses 250 DDPM steps with guidance 1.5.
# Differences: the variance channels (learn_sigma) get no VLB loss here; the paper's FID is not computed offline.
# Needs ImageNet under data/imagenet (class folders) and the VAE from the hub ('stabilityai/sd-vae-ft-ema').
from diffusers import AutoencoderKL
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.hooks import EMAHook
from mmengine.optim import OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW
from visionattn.heads.diffusion.dit import dit_xl_2

from visionattn.data.diffusion import ImageFolderCannyDataset
from visionattn.engine.diffusion import DiffusionModel, SampleQualityMetric, diffusion_collate

with read_base():
    from .._base_.default_runtime import *

sd_vae_ft_ema = dict(type=AutoencoderKL, from_pretrained='stabilityai/sd-vae-ft-ema',
                     block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
                     up_block_types=('UpDecoderBlock2D',) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
model = dict(type=DiffusionModel, pretrained=True, vae=sd_vae_ft_ema,
             denoiser=dict(type=dit_xl_2, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True,
                           class_dropout_prob=0.1),
             sampler='ddpm', num_inference_steps=250, guidance_scale=1.5)
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
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-4, weight_decay=0.0))
param_scheduler = []
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=50_000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
custom_hooks.append(dict(type=EMAHook, momentum=1e-4, update_buffers=True))
default_hooks.checkpoint.update(by_epoch=False, interval=50_000, max_keep_ckpts=2)
default_hooks.logger.update(interval=100)
log_processor.update(by_epoch=False)
