# Smoke run of the detection stack on CPU: a tiny Focus-DETR (ResNet-18 from scratch, 64-d, 2 encoder + 2 decoder
# layers, 30 queries, 4 denoising queries) on the synthetic COCO shapes at 128 pixels, 3 classes: 40 epochs of 64
# iterations of 4 images (about 30 minutes on 2 busy CPU cores), COCO box AP every 10 epochs. Because everything starts
# from scratch, it trains at lr 4e-4 with clipping at 1.0 (the official recipe's 1e-4 / 0.1 is for a pretrained
# backbone and learned nothing in a few hundred iterations here). Shorten it with e.g.
#   python tools/train.py configs/detection/focus_detr_r18_synthetic_shapes.py --cfg-options train_cfg.max_epochs=1 \
#       train_dataloader.dataset.max_samples=16 val_dataloader.dataset.max_samples=8
from mmengine.config import read_base
from mmengine.optim import MultiStepLR, OptimWrapper
from mmengine.runner import EpochBasedTrainLoop, TestLoop, ValLoop
from torch.optim import AdamW
from visionattn.heads.detection import FocusDETR, FocusDETRDecoder, FocusDETREncoder
from visionattn.heads.detection.task import DetDataPreprocessor, Detector

with read_base():
    from .._base_.default_runtime import *
    from ._base_.synthetic_coco_shapes import *

model = dict(
    type=Detector,
    data_preprocessor=dict(type=DetDataPreprocessor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    network=dict(
        type=FocusDETR, backbone='resnet18', num_classes=num_classes, pretrained=False, freeze_bn=False,
        embed_dims=64, num_feature_levels=4,
        encoder=dict(type=FocusDETREncoder, num_layers=2, focus_rho=0.5, cascade_ratios=(1.0, 0.8), topk_sa=32,
                     ffn_dims=128),
        decoder=dict(type=FocusDETRDecoder, num_layers=2, ffn_dims=128),
        num_queries=30, dn_number=4, num_select=30),
)
max_epochs = 40
# The backbone is trained from scratch here, so it keeps the full learning rate.
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=AdamW, lr=4e-4, weight_decay=1e-4),
                     clip_grad=dict(max_norm=1.0, norm_type=2))
param_scheduler = [dict(type=MultiStepLR, begin=0, end=max_epochs, by_epoch=True, milestones=[34], gamma=0.1)]
train_cfg = dict(type=EpochBasedTrainLoop, max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type=ValLoop)
test_cfg = dict(type=TestLoop)
env_cfg.update(cudnn_benchmark=False)
default_hooks.checkpoint.update(interval=10, max_keep_ckpts=2, save_best='coco/bbox_mAP', rule='greater')
default_hooks.logger.update(interval=64)
