# MambaOut-Tiny on ImageNet-1k at the official recipe: see configs/_base_/schedules/mambaout_in1k.py for
# the sources and the gaps. Drop path 0.2, from scripts/train_mambaout_tiny.sh;
# the released weights reach 82.7% top-1 (README.md).
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.datasets.imagenet import *
    from .._base_.default_runtime import *
    from .._base_.schedules.mambaout_in1k import *

model = dict(type=ImageClassifier, backbone='mambaout_tiny', num_classes=num_classes, label_smoothing=label_smoothing,
             mixup=mixup, random_erasing=random_erasing, backbone_kwargs=dict(drop_path_rate=0.2))
train_dataloader.update(batch_size=512, sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment)
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
