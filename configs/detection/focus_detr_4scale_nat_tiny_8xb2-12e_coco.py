# Focus-DETR on NAT-Tiny (ImageNet-1k weights; drop path 0.2, the value NAT's Mask R-CNN NAT-Tiny config is
# recalled to use, not checked here), otherwise the R50 12-epoch recipe: 4 levels from strides 8-32 plus a stride-64
# level, AdamW lr 1e-4 with the backbone at 0.1x, clip 0.1, 8 GPUs x 2 images; no weight decay on the relative
# position biases. No published result: the pairing is visionattn's (NAT's own detection results use Mask and
# Cascade Mask R-CNN).
from mmengine.config import read_base

with read_base():
    from .._base_.default_runtime import *
    from ._base_.coco_detection import *
    from ._base_.focus_detr_4scale_r50 import *
    from ._base_.focus_detr_schedule import *

model.network.update(backbone='nat_tiny', backbone_kwargs=dict(drop_path_rate=0.2))
optim_wrapper.paramwise_cfg.custom_keys.update(rpb=dict(decay_mult=0.0))
default_hooks.checkpoint.update(interval=1, max_keep_ckpts=3, save_best='coco/bbox_mAP', rule='greater')
