# COCO 2017 detection in the standard layout under data/coco: annotations/instances_{train,val}2017.json and the
# train2017/ and val2017/ image folders. Focus-DETR's data (detrex's coco_detr dataloader, after DETR and DINO):
# horizontal flip, then with probability 1/2 a resize of the shorter side to one of 480, 512, ..., 800 (longer side
# <= 1333), or a resize to 400/500/600, a random 384-600 crop and the same multi-scale resize; images without a
# non-crowd box are left out of training (detectron2's filter_empty). Test: shorter side 800, longer <= 1333.
# 2 images a GPU; box AP from pycocotools on val2017.
from mmengine.dataset import DefaultSampler
from visionattn.heads.detection.data import CocoDetection, detection_transforms
from visionattn.heads.detection.evaluation import CocoMetric
from visionattn.heads.detection.task import det_collate

data_root = 'data/coco'
num_classes = 80
train_dataloader = dict(
    batch_size=2, num_workers=2, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=det_collate),
    dataset=dict(type=CocoDetection, data_root=data_root, ann_file='annotations/instances_train2017.json',
                 img_dir='train2017', filter_empty_gt=True,
                 pipeline=dict(type=detection_transforms, train=True)),
)
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=det_collate),
    dataset=dict(type=CocoDetection, data_root=data_root, ann_file='annotations/instances_val2017.json',
                 img_dir='val2017', pipeline=dict(type=detection_transforms, train=False)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=CocoMetric)  # the dataset's annotation file
test_evaluator = val_evaluator
