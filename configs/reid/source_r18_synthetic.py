# Smoke run of CORE-ReID's source pre-training on the synthetic 'source' pedestrians (runs on a CPU in about a
# minute): ResNet-18 from scratch with last stride 1 at 64x32, the official losses and optimiser with a shorter
# schedule (lr 1e-3 with a 1-epoch warm-up: from scratch, 3.5e-4 learns too slowly for a smoke run), 6 epochs of 8 PK
# batches (4 identities x 4 images). Tested on the synthetic 'target' domain: the source-only baseline of
# core_reid_r18_synthetic.py.
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from mmengine.optim import LinearLR
from visionattn.heads.reid.data import ReIDTestDataset, reid_transforms
from visionattn.heads.reid.evaluation import PKSampler, reid_collate
from visionattn.heads.reid.task import ReIDSourceModel

with read_base():
    from .._base_.default_runtime import *
    from ._base_.reid_source import *
    from ._base_.synthetic_pedestrians import *

max_epochs = 6
iters_per_epoch = 8
batch_size = 16
img_size = (64, 32)
model = dict(type=ReIDSourceModel, backbone='resnet18', num_classes=synthetic_num_ids, last_stride=1)
train_dataloader = dict(
    batch_size=batch_size, num_workers=0,
    sampler=dict(type=PKSampler, batch_size=batch_size, num_instances=4, num_batches=iters_per_epoch),
    collate_fn=dict(type=reid_collate),
    dataset=dict(**synthetic_source_train,
                 pipeline=dict(type=reid_transforms, train=True, img_size=img_size, random_erasing=0.0, pad=4,
                               gray_patch=0.4)),
)
test_dataloader = dict(
    batch_size=64, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=reid_collate),
    dataset=dict(type=ReIDTestDataset, query=synthetic_target_query, gallery=synthetic_target_gallery),
)
val_dataloader = test_dataloader
optim_wrapper.optimizer.update(lr=1e-3)
param_scheduler = [dict(type=LinearLR, start_factor=0.1, end_factor=1.0, by_epoch=True, begin=0, end=2)]
train_cfg.update(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks.checkpoint.update(interval=max_epochs)
default_hooks.logger.update(interval=4)
