# CORE-ReID source pre-training of ResNet-50 on Market-1501: source_r101_market1501.py (last stride 1, torchvision's
# ImageNet weights, the official schedule of configs/reid/_base_/reid_source.py) with the other backbone.
# To fine-tune from it, run a core_reid_r101_market1501_to_* config with --cfg-options model.backbone=resnet50
# model.source_checkpoint=work_dirs/source_r50_market1501/epoch_120.pth.
from mmengine.config import read_base

with read_base():
    from .source_r101_market1501 import *

model.update(backbone='resnet50.tv_in1k')
