# CORE-ReID source pre-training of ResNet-101 (last stride 1, torchvision's ImageNet weights as the official code) on
# DukeMTMC-reID at the official schedule (configs/reid/_base_/reid_source.py): label-smoothed CE + soft-margin
# triplet, PK batches of 64, 120 epochs. Validated and tested on the DukeMTMC-reID query/gallery; the checkpoint
# initialises the core_reid_r101_dukemtmc_to_* configs.
from mmengine.config import read_base
from visionattn.heads.reid.data import ReIDTestDataset
from visionattn.heads.reid.evaluation import reid_collate
from visionattn.heads.reid.task import ReIDSourceModel

with read_base():
    from .._base_.default_runtime import *
    from ._base_.dukemtmc import *
    from ._base_.reid_source import *

model = dict(type=ReIDSourceModel, backbone='resnet101.tv_in1k', num_classes=dukemtmc_num_pids,
             pretrained=True, last_stride=1)
train_dataloader = dict(batch_size=batch_size, num_workers=4, persistent_workers=True, sampler=pk_sampler,
                        collate_fn=dict(type=reid_collate), dataset=dict(**dukemtmc_train, pipeline=train_pipeline))
test_dataloader = dict(**test_loader_base,
                       dataset=dict(type=ReIDTestDataset, query=dict(**dukemtmc_query, pipeline=test_pipeline),
                                    gallery=dict(**dukemtmc_gallery, pipeline=test_pipeline)))
val_dataloader = test_dataloader
default_hooks.checkpoint.update(interval=5)
