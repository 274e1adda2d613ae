# Synthetic CT-like volumes (visionattn.heads.segmentation.medical_data.SyntheticSlicesDataset): an organ
# (ellipsoid) and a vessel (thin curved tube) on noisy 1-channel 64x64 slices, 8 slices per volume; nothing to
# download. Training volumes come from seed 0, test volumes from seed 1. The official augmentations; scored per volume
# with Dice and HD95.
from mmengine.dataset import DefaultSampler
from visionattn.heads.segmentation.medical_data import SyntheticSlicesDataset, medical_transforms
from visionattn.heads.segmentation.medical_task import DiceHD95Metric
from visionattn.heads.segmentation.task import seg_collate

img_size = 64
num_classes = 3
train_dataloader = dict(
    batch_size=4, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=SyntheticSlicesDataset, num_volumes=8, slices=8, size=img_size, seed=0,
                 pipeline=dict(type=medical_transforms, train=True, img_size=img_size)),
)
test_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=SyntheticSlicesDataset, num_volumes=3, slices=8, size=img_size, seed=1),
)
val_dataloader = test_dataloader
test_evaluator = dict(type=DiceHD95Metric)
val_evaluator = test_evaluator
