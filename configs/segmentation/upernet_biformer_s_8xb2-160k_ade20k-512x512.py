# UPerNet with BiFormer-S on ADE20K at the BiFormer paper's recipe (Zhu et al., CVPR 2023; rayleizhu/BiFormer
# semantic_segmentation/configs/ade20k/upernet.biformer_small.py): ImageNet-1k weights, n_win 8 for 512 crops,
# drop path 0.3, FCN auxiliary head (0.4), 8 GPUs x 2 images, 160k iterations, SyncBN. The repo reports 49.8 mIoU
# single-scale and 50.8 multi-scale with flip. The model has 55.3M parameters (auxiliary head included).
from mmengine.config import read_base
from visionattn.heads.segmentation.decoders import UPerNet
from visionattn.heads.segmentation.task import Segmentor

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_poly_160k import *
    from ._base_.ade20k import *

model = dict(type=Segmentor, num_classes=num_classes,
             network=dict(type=UPerNet, backbone='biformer_s', num_classes=num_classes, pretrained=True,
                          backbone_kwargs=dict(n_win=8, drop_path_rate=0.3)))
sync_bn = 'torch'
default_hooks.checkpoint.update(by_epoch=False, interval=16000, max_keep_ckpts=1, save_best='mIoU')
log_processor.update(by_epoch=False)
