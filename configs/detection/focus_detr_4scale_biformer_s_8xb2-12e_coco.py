# Focus-DETR on BiFormer-S (ImageNet-1k weights; drop path 0.3 as this repo's BiFormer-S segmentation configs, BRA
# padding maps that n_win does not divide), otherwise the R50 12-epoch recipe: 4 levels from strides 8-32 plus a
# stride-64 level, AdamW lr 1e-4 with the backbone at 0.1x, clip 0.1, 8 GPUs x 2 images. No published result: the
# pairing is visionattn's (BiFormer's own detection results use RetinaNet and Mask R-CNN).
from mmengine.config import read_base

with read_base():
    from .._base_.default_runtime import *
    from ._base_.coco_detection import *
    from ._base_.focus_detr_4scale_r50 import *
    from ._base_.focus_detr_schedule import *

model.network.update(backbone='biformer_s', backbone_kwargs=dict(drop_path_rate=0.3))
default_hooks.checkpoint.update(interval=1, max_keep_ckpts=3, save_best='coco/bbox_mAP', rule='greater')
