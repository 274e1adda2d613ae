# Synthetic COCO shapes (visionattn.heads.detection.data.SyntheticCocoDetection): 1-5 rectangles, ellipses and
# triangles of random colour and size on textured backgrounds, 128x128, written in COCO format under
# data/synthetic_coco_shapes on first use (nothing to download). DETR's augmentation scaled to the image: flip, then
# the shorter side to 96-160 (longer <= 213), or to 96/112/128, a 72-112 crop and the multi-scale resize; test at 128.
# Box AP from pycocotools on the generated annotation file.
from mmengine.dataset import DefaultSampler
from visionattn.heads.detection.data import SyntheticCocoDetection, detection_transforms
from visionattn.heads.detection.evaluation import CocoMetric
from visionattn.heads.detection.task import det_collate

synthetic_root = 'data/synthetic_coco_shapes'
img_size = 128
num_classes = 3
train_dataloader = dict(
    batch_size=4, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=det_collate),
    dataset=dict(type=SyntheticCocoDetection, root=synthetic_root, split='train', num_images=256,
                 img_size=img_size, num_classes=num_classes, seed=0, filter_empty_gt=True,
                 pipeline=dict(type=detection_transforms, train=True, scales=(96, 112, 128, 144, 160), max_size=213,
                               crop_scales=(96, 112, 128), crop_size=(72, 112), test_scale=img_size)),
)
val_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=det_collate),
    dataset=dict(type=SyntheticCocoDetection, root=synthetic_root, split='val', num_images=64, img_size=img_size,
                 num_classes=num_classes, seed=1,
                 pipeline=dict(type=detection_transforms, train=False, test_scale=img_size, max_size=213)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=CocoMetric)
test_evaluator = val_evaluator
