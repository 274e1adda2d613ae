# RelaCtrl on PixArt-XL-2-1024-MS with Canny control, as in the paper (arXiv 2502.14377; 360CVGroup/RelaCtrl
# diffusion/configs/config_relactrl_pixart_1024.py): 11 TDSM control blocks (45.7M parameters) after base blocks
# [0, 2..9, 18, 19], base frozen, sd-vae-ft-ema latents at 128x128, 20 DPM-Solver steps. Not trainable here: it
# needs the PixArt-XL-2-1024-MS checkpoint (pretrained_models/), T5-XXL caption embeddings (absent: the null
# caption is used, i.e. unconditional generation) and a captioned image set under data/canny_images. The repo ships
# inference only; the optimiser below (AdamW 2e-5, PixArt's ControlNet recipe) is our assumption.
# The paper's guidance 4.5 acts on captions, which the engine does not guide (labels only).
from diffusers import AutoencoderKL
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.optim import OptimWrapper
from mmengine.runner import IterBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW
from visionattn.heads.diffusion.data import ImageFolderCannyDataset
from visionattn.heads.diffusion.dit import pixart_ms_xl_2
from visionattn.heads.diffusion.evaluation import ControlFidelityMetric, SampleQualityMetric
from visionattn.heads.diffusion.relactrl import RelaCtrlPixArt
from visionattn.heads.diffusion.task import ControlledDiffusionModel, diffusion_collate

with read_base():
    from .._base_.default_runtime import *

sd_vae_ft_ema = dict(type=AutoencoderKL, from_pretrained='stabilityai/sd-vae-ft-ema',
                     block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
                     up_block_types=('UpDecoderBlock2D',) * 4, layers_per_block=2, latent_channels=4, sample_size=256)
model = dict(type=ControlledDiffusionModel, pretrained=True, vae=sd_vae_ft_ema,
             denoiser=dict(type=RelaCtrlPixArt,
                           base=dict(type=pixart_ms_xl_2, in_channels=4, caption_channels=4096, pred_sigma=True),
                           base_checkpoint='pretrained_models/PixArt-XL-2-1024-MS.pth', inference_seed=0),
             sampler='dpm_solver', num_inference_steps=20, guidance_scale=1.0, compare_base=True)
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True,
    sampler=dict(type=InfiniteSampler, shuffle=True),
    collate_fn=dict(type=diffusion_collate),
    dataset=dict(type=ImageFolderCannyDataset, root='data/canny_images/train', img_size=1024),
)
val_dataloader = dict(
    batch_size=2, num_workers=4,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=diffusion_collate),
    dataset=dict(type=ImageFolderCannyDataset, root='data/canny_images/val', img_size=1024),
)
test_dataloader = val_dataloader
val_evaluator = [dict(type=ControlFidelityMetric, tolerance=2, canny_sigma=2.0), dict(type=SampleQualityMetric)]
test_evaluator = val_evaluator
max_iters = 50_000
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=2e-5, weight_decay=0.03))
param_scheduler = []
train_cfg = dict(type=IterBasedTrainLoop, max_iters=max_iters, val_interval=10_000)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
default_hooks.checkpoint.update(by_epoch=False, interval=5_000, max_keep_ckpts=2)
log_processor.update(by_epoch=False)
