# ImageNet-1k in the ImageFolder layout: <data_root>/train/<wnid>/*.JPEG and <data_root>/val/<wnid>/*.JPEG.
# Training augmentation as the DeiT/Swin recipes: random resized crop, flip, TrivialAugment-like ops, random
# erasing 0.25 (Mixup/CutMix and label smoothing live in the model config); evaluation resizes and centre-crops.
from mmengine.dataset import DefaultSampler

from visionattn.data import ImageFolderDataset, classification_transforms
from visionattn.engine import Accuracy, cls_collate

data_root = 'data/imagenet'
img_size = 224
num_classes = 1000
train_dataloader = dict(
    batch_size=128, num_workers=8, drop_last=True, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=cls_collate),
    dataset=dict(type=ImageFolderDataset, data_root=data_root, split='train',
                 pipeline=dict(type=classification_transforms, train=True, img_size=img_size,
                               random_erasing=0.25)),
)
val_dataloader = dict(
    batch_size=128, num_workers=8, persistent_workers=True, pin_memory=True,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=cls_collate),
    dataset=dict(type=ImageFolderDataset, data_root=data_root, split='val',
                 pipeline=dict(type=classification_transforms, train=False, img_size=img_size, crop_pct=0.875)),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=Accuracy, topk=(1, 5))
test_evaluator = val_evaluator
