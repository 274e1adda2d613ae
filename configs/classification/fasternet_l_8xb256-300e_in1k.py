# FasterNet-L on ImageNet-1k at the official recipe: see configs/_base_/schedules/fasternet_in1k.py for
# the sources and the gaps. From cfg/fasternet_l.yaml: wd 0.05, drop path 0.3, mixup 0.7,
# rand-m7-mstd0.5-inc1, grad norm clipped at 0.01, lr 0.002 at batch 2048.
from mmengine.config import read_base
from visionattn.heads.classification.task import ImageClassifier

with read_base():
    from .._base_.datasets.imagenet import *
    from .._base_.default_runtime import *
    from .._base_.schedules.fasternet_in1k import *

model = dict(type=ImageClassifier, backbone='fasternet_l', num_classes=num_classes, label_smoothing=label_smoothing,
             mixup=dict(mixup, mixup_alpha=0.7),
             random_erasing=random_erasing, backbone_kwargs=dict(drop_path_rate=0.3))
optim_wrapper.optimizer.update(lr=0.002, weight_decay=0.05)
param_scheduler[0].update(start_factor=0.0005)  # warm-up from 1e-6
auto_scale_lr.update(base_batch_size=2048)
optim_wrapper.update(clip_grad=dict(max_norm=0.01))
train_dataloader.update(batch_size=256, sampler=train_sampler)
train_dataloader.dataset.pipeline.update(train_augment, auto_augment='rand-m7-mstd0.5-inc1')
val_dataloader.dataset.pipeline.update(crop_pct=eval_crop_pct)
test_dataloader = val_dataloader
