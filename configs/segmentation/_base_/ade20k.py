# ADE20K SceneParsing (ADEChallengeData2016: images/{training,validation}/*.jpg, annotations/.../*.png; 150
# classes, label 0 ignored) with mmseg's pipeline, which the BiFormer and NAT ADE20K results used (BiFormer repo
# semantic_segmentation/configs/_base_/datasets/ade20k_upernet.py, NAT repo segmentation/configs/_base_/datasets/):
# resize to (2048, 512) x 0.5-2.0 keeping the aspect ratio, 512x512 crop with cat_max_ratio 0.75, flip,
# photometric distortion; single-scale test at (2048, 512), evaluated at the annotation's own resolution.
from mmengine.dataset import DefaultSampler, InfiniteSampler
from visionattn.heads.segmentation.data import ADE20KDataset
from visionattn.heads.segmentation.evaluation import IoUMetric
from visionattn.heads.segmentation.task import seg_collate
from visionattn.heads.segmentation.transforms import segmentation_transforms

data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)
num_classes = 150
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True, pin_memory=True,
    sampler=dict(type=InfiniteSampler, shuffle=True),
    collate_fn=dict(type=seg_collate),
    # 128 listings of the 20,210 images cover 160k iterations of 16 images without repeating an augmentation draw.
    dataset=dict(type=ADE20KDataset, data_root=data_root, split='training', repeat_times=128,
                 pipeline=dict(type=segmentation_transforms, train=True, crop_size=crop_size, img_scale=(2048, 512),
                               scale=(0.5, 2.0), cat_max_ratio=0.75)),
)
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=ADE20KDataset, data_root=data_root, split='validation', gt_original_size=True,
                 pipeline=dict(type=segmentation_transforms, train=False, crop_size=crop_size, img_scale=(2048, 512))),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=IoUMetric, classwise=False)  # the 150 per-class IoUs go to the log as a table
test_evaluator = val_evaluator
