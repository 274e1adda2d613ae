# Synthetic shapes (visionattn.heads.segmentation.data.SyntheticShapesDataset): disks, rotated rectangles and
# triangles of random colour on smooth RGB noise, 64x64, 4 classes with the background; generated on the fly, nothing
# to download. Training uses mmseg's ADE20K augmentation scaled to 64 pixels, with a milder resize range for short
# runs (random resize 0.75-1.5, crop, flip, photometric distortion).
from mmengine.dataset import DefaultSampler, InfiniteSampler
from visionattn.heads.segmentation.data import SyntheticShapesDataset
from visionattn.heads.segmentation.evaluation import IoUMetric
from visionattn.heads.segmentation.task import seg_collate
from visionattn.heads.segmentation.transforms import segmentation_transforms

img_size = 64
num_classes = 4
train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type=InfiniteSampler, shuffle=True),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=SyntheticShapesDataset, num_samples=512, img_size=img_size, num_classes=num_classes, seed=0,
                 repeat_times=8,
                 pipeline=dict(type=segmentation_transforms, train=True, crop_size=img_size,
                               img_scale=(img_size, img_size), scale=(0.75, 1.5))),
)
val_dataloader = dict(
    batch_size=16, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=SyntheticShapesDataset, num_samples=128, img_size=img_size, num_classes=num_classes, seed=1),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=IoUMetric)
test_evaluator = val_evaluator
