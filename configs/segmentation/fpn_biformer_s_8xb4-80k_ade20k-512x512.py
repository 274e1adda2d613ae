# Semantic FPN with BiFormer-S on ADE20K at the BiFormer paper's recipe (Zhu et al., CVPR 2023; rayleizhu/BiFormer
# semantic_segmentation/configs/ade20k/sfpn.biformer_small.py, after UniFormer): ImageNet-1k weights, n_win 8,
# drop path 0.15, 8 GPUs x 4 images, 80k iterations of AdamW 2e-4 with cosine decay, SyncBN. The repo reports
# 48.9 mIoU single-scale. Its test resize rounds sizes to multiples of 32 (AlignResize); here the preprocessor pads
# to a multiple of 32 instead. The model has 29.3M parameters.
from mmengine.config import read_base
from visionattn.heads.segmentation.decoders import SemanticFPN
from visionattn.heads.segmentation.task import SegDataPreprocessor, Segmentor

with read_base():
    from .._base_.default_runtime import *
    from ._base_.adamw_cosine_80k import *
    from ._base_.ade20k import *

model = dict(type=Segmentor, num_classes=num_classes,
             data_preprocessor=dict(type=SegDataPreprocessor, size_divisor=32),
             network=dict(type=SemanticFPN, backbone='biformer_s', num_classes=num_classes, pretrained=True,
                          backbone_kwargs=dict(n_win=8, drop_path_rate=0.15)))
train_dataloader.update(batch_size=4)
train_dataloader.dataset.update(repeat_times=128)  # 80k x 32 images = 127 passes over the 20,210
sync_bn = 'torch'
default_hooks.checkpoint.update(by_epoch=False, interval=4000, max_keep_ckpts=1, save_best='mIoU')
log_processor.update(by_epoch=False)
