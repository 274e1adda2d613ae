# scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), shipped with scikit-learn: the embedded
# default that needs no download. Images are upscaled to img_size; no flips (digits are not mirror-symmetric).
from mmengine.dataset import DefaultSampler
from visionattn.heads.classification.data import DigitsDataset
from visionattn.heads.classification.task import cls_collate

from visionattn.data import classification_transforms
from visionattn.engine import Accuracy

img_size = 32
num_classes = 10
train_dataloader = dict(
    batch_size=32, num_workers=0, drop_last=True,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=cls_collate),
    dataset=dict(type=DigitsDataset, split='train',
                 pipeline=dict(type=classification_transforms, train=True, img_size=img_size, scale=(0.6, 1.0),
                               hflip=0.0, interpolation='bilinear')),
)
val_dataloader = dict(
    batch_size=64, num_workers=0,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=cls_collate),
    dataset=dict(type=DigitsDataset, split='test',
                 pipeline=dict(type=classification_transforms, train=False, img_size=img_size, crop_pct=1.0,
                               interpolation='bilinear')),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=Accuracy, topk=(1, 5))
test_evaluator = val_evaluator
