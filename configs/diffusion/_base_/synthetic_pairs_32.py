# Synthetic paired data for diffusion smoke runs (visionattn.heads.diffusion.data.SyntheticDiffusionPairs): one filled
# disk / square / triangle (the class) on a colour gradient, 32x32 RGB, with its Canny edge map as the control.
# Generated on the fly and deterministic per index; nothing to download. Diffusion runs in pixel space.
from mmengine.dataset import DefaultSampler, InfiniteSampler
from visionattn.heads.diffusion.data import SyntheticDiffusionPairs
from visionattn.heads.diffusion.evaluation import ControlFidelityMetric, SampleQualityMetric
from visionattn.heads.diffusion.task import diffusion_collate

img_size = 32
num_classes = 3
train_dataloader = dict(
    batch_size=128, num_workers=4, persistent_workers=True,
    sampler=dict(type=InfiniteSampler, shuffle=True),
    collate_fn=dict(type=diffusion_collate),
    dataset=dict(type=SyntheticDiffusionPairs, num_samples=50000, img_size=img_size, seed=0),
)
val_dataloader = dict(
    batch_size=64, num_workers=2,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=diffusion_collate),
    dataset=dict(type=SyntheticDiffusionPairs, num_samples=256, img_size=img_size, seed=1),
)
test_dataloader = val_dataloader
val_evaluator = [dict(type=ControlFidelityMetric, tolerance=1), dict(type=SampleQualityMetric)]
test_evaluator = val_evaluator
