# The Focus-DETR R50 4-scale model (huawei-noah/noah-research Focus-DETR/projects/focus_detr/configs/models/
# focus_detr_r50.py, Apache-2.0): frozen-BN ResNet-50 with ImageNet weights (the official run starts from
# torchvision's, timm's 'resnet50.tv_in1k') and its stem frozen, strides 8/16/32 mapped to 256 channels plus a
# stride-64 level, 900 queries, 6 encoder + 6 decoder layers (8 heads, FFN 2048, 4 sampling points), CDN with 100
# denoising queries (label noise 0.5, box noise 1.0), foreground keep ratio 0.5 with cascade ratios 1.0-0.2, dual
# attention on the top 300 tokens, top-300 outputs; focal/L1/GIoU weights 1/5/2 and the foreground loss 1.5.
from visionattn.heads.detection import (
    FocusDETR,
    FocusDETRCriterion,
    FocusDETRDecoder,
    FocusDETREncoder,
    HungarianMatcher,
)
from visionattn.heads.detection.task import DetDataPreprocessor, Detector

from visionattn.layers import ChannelMapper

num_classes = 80
model = dict(
    type=Detector,
    data_preprocessor=dict(type=DetDataPreprocessor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    network=dict(
        type=FocusDETR, backbone='resnet50.tv_in1k', num_classes=num_classes, pretrained=True, freeze_bn=True,
        freeze_at=1, num_backbone_levels=3, embed_dims=256, num_feature_levels=4,
        # in_channels, out_channels (embed_dims) and num_outs (num_feature_levels) come from the detector
        neck=dict(type=ChannelMapper, kernel_size=1, num_groups=32),
        encoder=dict(type=FocusDETREncoder, num_layers=6, focus_rho=0.5, cascade_ratios=(1.0, 0.8, 0.6, 0.6, 0.4, 0.2),
                     topk_sa=300, num_heads=8, ffn_dims=2048, num_points=4, dropout=0.0),
        decoder=dict(type=FocusDETRDecoder, num_layers=6, num_heads=8, ffn_dims=2048, num_points=4, dropout=0.0),
        matcher=dict(type=HungarianMatcher, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
        criterion=dict(type=FocusDETRCriterion, class_weight=1.0, bbox_weight=5.0, giou_weight=2.0,
                       foreground_weight=1.5),
        num_queries=900, dn_number=100, label_noise_ratio=0.5, box_noise_scale=1.0, num_select=300),
)
