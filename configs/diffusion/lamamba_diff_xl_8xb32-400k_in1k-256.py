# LaMamba-Diff-XL at 256 px on ImageNet-1k (Fu et al. 2024, arXiv:2408.02615; yunxiangfu2001/LaMamba-Diff train.py
# and configs/LaMamba-DIff-XL.yaml): the U-Net of LaMamba blocks (dims 320-640-1280-1280, depths 2-2-2-2, bottleneck 2,
# d_state 1, window 8, 8 heads), 652M parameters, latent diffusion in sd-vae-ft-mse's 32x32x4 space (train.py's
# default VAE), 1000 classes with class dropout 0.1, random flips, EMA 0.9999, global batch 256 (8 x 32).
# Optimiser as the official train.py: AdamW lr 1e-4 with torch's default weight decay 0.01 (DiT sets 0; LaMamba-Diff
# keeps the default). The repository states no iteration budget (train.py's default is 1400 epochs); 400K steps
# here, DiT-XL/2's schedule, for a like-for-like comparison. FID sampling (sample.py): 250 DDPM steps, guidance 1.5.
# Differences: the variance channels get no VLB loss here; FID is not computed offline.
# Needs ImageNet under data/imagenet (class folders) and the VAE from the hub ('stabilityai/sd-vae-ft-mse').
from diffusers import AutoencoderKL
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.hooks import EMAHook
from mmengine.optim import OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW
from visionattn.heads.diffusion.lamamba_diff import lamamba_diff_xl

from visionattn.data.diffusion import ImageFolderCannyDataset
from visionattn.engine.diffusion import DiffusionModel, SampleQualityMetric, diffusion_collate

with read_base():
    from .._base_.default_runtime import *

sd_vae_ft_mse = dict(type=AutoencoderKL, from_pretrained='stabilityai/sd-vae-ft-mse',
                     block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
                     up_block_types=('UpDecoderBlock2D',) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
model = dict(type=DiffusionModel, pretrained=True, vae=sd_vae_ft_mse,
             denoiser=dict(type=lamamba_diff_xl, input_size=32, in_channels=4, num_classes=1000,
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
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=1e-4, weight_decay=0.01))
param_scheduler = []
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=50_000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
custom_hooks.append(dict(type=EMAHook, momentum=1e-4, update_buffers=True))
default_hooks.checkpoint.update(by_epoch=False, interval=50_000, max_keep_ckpts=2)
default_hooks.logger.update(interval=100)
log_processor.update(by_epoch=False)
