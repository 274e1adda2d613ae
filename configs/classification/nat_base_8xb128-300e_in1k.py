# NAT-Base on ImageNet-1k at the official NAT recipe: see configs/_base_/schedules/nat_in1k.py for
# the sources and the gaps. Drop path 0.5, as classification/nat.py of the official repo sets it.
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.datasets.imagenet import *
    from .._base_.default_runtime import *
    from .._base_.schedules.nat_in1k import *

model = dict(type=ImageClassifier, backbone='nat_base', num_classes=num_classes, label_smoothing=label_smoothing,
             mixup=mixup, random_erasing=random_erasing, backbone_kwargs=dict(drop_path_rate=0.5))
train_dataloader.update(batch_size=128, sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment)
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
