# Focus-DETR with a ResNet-50, 4 feature levels, 12 epochs on COCO 2017 (Zheng et al., "Less is More: Focus
# Attention for Efficient DETR", ICCV 2023; huawei-noah/noah-research Focus-DETR/projects/focus_detr/configs/
# focus_detr_resnet/focus_detr_r50_4scale_12ep.py, Apache-2.0): 8 GPUs x 2 images, AdamW lr 1e-4 (backbone 0.1x),
# lr x 0.1 at epoch 11 (the official 90k iterations). The README reports 48.8 box AP on val2017.
#   torchrun --nproc_per_node 8 tools/train.py configs/detection/focus_detr_4scale_r50_8xb2-12e_coco.py \
#       --launcher pytorch
from mmengine.config import read_base

with read_base():
    from .._base_.default_runtime import *
    from ._base_.coco_detection import *
    from ._base_.focus_detr_4scale_r50 import *
    from ._base_.focus_detr_schedule import *

default_hooks.checkpoint.update(interval=1, max_keep_ckpts=3, save_best='coco/bbox_mAP', rule='greater')
