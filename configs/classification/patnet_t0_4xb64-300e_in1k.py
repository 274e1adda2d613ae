# PATNet-T0 on ImageNet-1k at the authors' PartialNet recipe: see configs/_base_/schedules/patnet_in1k.py for
# the sources and the gaps. From cfg/PartialNet_t0.yaml: wd 0.005, drop path 0.0, mixup 0.05,
# no RandAugment, no clipping, lr 0.004 at batch 256.
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.datasets.imagenet import *
    from .._base_.default_runtime import *
    from .._base_.schedules.patnet_in1k import *

model = dict(type=ImageClassifier, backbone='patnet_t0', num_classes=num_classes, label_smoothing=label_smoothing,
             mixup=dict(mixup, mixup_alpha=0.05),
             random_erasing=random_erasing, backbone_kwargs=dict(drop_path_rate=0.0))
optim_wrapper.optimizer.update(weight_decay=0.005)
train_dataloader.update(batch_size=64, sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment)
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
