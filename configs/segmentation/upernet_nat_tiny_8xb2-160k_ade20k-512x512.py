# UPerNet with NAT-Tiny on ADE20K at the NAT paper's recipe (Hassani et al., CVPR 2023; SHI-Labs/
# Neighborhood-Attention-Transformer segmentation/configs/nat/upernet_nat_tiny_512x512_160k_ade20k.py): ImageNet-1k
# weights, drop path 0.3, FCN auxiliary head (0.4), no weight decay on norms and relative position biases, 8 GPUs
# x 2 images, 160k iterations, SyncBN. The repo reports 47.1 mIoU single-scale, 48.4 multi-scale, and 58M
# parameters; this model has 57.7M (auxiliary head included).
from mmengine.config import read_base
from visionattn.heads.segmentation.decoders import UPerNet
from visionattn.heads.segmentation.task import Segmentor

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_poly_160k import *
    from ._base_.ade20k import *

model = dict(type=Segmentor, num_classes=num_classes,
             network=dict(type=UPerNet, backbone='nat_tiny', num_classes=num_classes, pretrained=True,
                          backbone_kwargs=dict(drop_path_rate=0.3)))
optim_wrapper.paramwise_cfg.custom_keys.update(rpb=dict(decay_mult=0.0))
sync_bn = 'torch'
default_hooks.checkpoint.update(by_epoch=False, interval=16000, max_keep_ckpts=1, save_best='mIoU')
log_processor.update(by_epoch=False)
