# ImageNet-1k in the ImageFolder layout: <data_root>/train/<wnid>/*.JPEG and <data_root>/val/<wnid>/*.JPEG.
# The pipelines are timm's own (timm.data.create_transform, through visionattn.data.TimmTransforms): training crops
# at random scale and aspect, flips, and adds what each recipe's `train_augment` names (RandAugment string, colour
# jitter, interpolation, multi-scale); evaluation resizes the shorter side to img_size / crop_pct and centre-crops.
# Random erasing, Mixup/CutMix and label smoothing live in the model config (timm's random erasing runs on the
# normalised batch on the device, as timm's train.py does it with its prefetcher), the sampler in `train_sampler`.
from mmengine.dataset import DefaultSampler
from visionattn.heads.classification.data import ImageFolderDataset
from visionattn.heads.classification.task import cls_collate

from visionattn.data import TimmTransforms
from visionattn.engine import Accuracy

data_root = 'data/imagenet'
img_size = 224
num_classes = 1000
train_dataloader = dict(
    batch_size=128, num_workers=8, drop_last=True, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=cls_collate),
    dataset=dict(type=ImageFolderDataset, data_root=data_root, split='train',
                 pipeline=dict(type=TimmTransforms, train=True, img_size=img_size, interpolation='bicubic')),
)
val_dataloader = dict(
    batch_size=128, num_workers=8, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=cls_collate),
    dataset=dict(type=ImageFolderDataset, data_root=data_root, split='val',
                 pipeline=dict(type=TimmTransforms, train=False, img_size=img_size, crop_pct=0.875,
                               interpolation='bicubic')),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=Accuracy, topk=(1, 5))
test_evaluator = val_evaluator
