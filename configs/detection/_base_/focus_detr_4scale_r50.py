# The Focus-DETR R50 4-scale model (huawei-noah/noah-research Focus-DETR/projects/focus_detr/configs/models/
# focus_detr_r50.py, Apache-2.0): frozen-BN ResNet-50 with ImageNet weights (the official run starts from
# torchvision's, timm's 'resnet50.tv_in1k') and its stem frozen, strides 8/16/32 mapped to 256 channels plus a
# stride-64 level, 900 queries, 6 encoder + 6 decoder layers (8 heads, FFN 2048, 4 sampling points), CDN with 100
# denoising queries (label noise 0.5, box noise 1.0), foreground keep ratio 0.5 with cascade ratios 1.0-0.2, dual
# attention on the top 300 tokens, top-300 outputs; focal/L1/GIoU weights 1/5/2 and the foreground loss 1.5.
from visionattn.heads.detection import FocusDETR
from visionattn.heads.detection.task import DetDataPreprocessor, Detector

num_classes = 80
model = dict(
    type=Detector,
    data_preprocessor=dict(type=DetDataPreprocessor, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    network=dict(type=FocusDETR, backbone='resnet50.tv_in1k', num_classes=num_classes, pretrained=True,
                 num_queries=900, num_encoder_layers=6, num_decoder_layers=6, embed_dims=256, num_feature_levels=4,
                 ffn_dims=2048, dn_number=100, label_noise_ratio=0.5, box_noise_scale=1.0, focus_rho=0.5,
                 cascade_ratios=(1.0, 0.8, 0.6, 0.6, 0.4, 0.2), topk_sa=300, num_select=300, freeze_bn=True),
)
