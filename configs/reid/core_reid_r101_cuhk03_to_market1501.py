# CORE-ReID target fine-tuning CUHK03-np -> Market-1501 with ResNet-101 (the official scripts' backbone for the
# ECAB/BMFN runs), K = 700 clusters per view (the paper's setting for Market-1501 targets), from the checkpoint of
# source_r101_cuhk03.py; the official schedule (configs/reid/_base_/reid_target.py): 80 epochs x 400 PK batches
# of 128, mean teacher, clustering every epoch.
#   python tools/train.py configs/reid/source_r101_cuhk03.py
#   python tools/train.py configs/reid/core_reid_r101_cuhk03_to_market1501.py
from mmengine.config import read_base
from visionattn.heads.reid.data import ReIDTestDataset
from visionattn.heads.reid.evaluation import reid_collate
from visionattn.heads.reid.task import ClusteringHook, CoreReIDTargetModel

with read_base():
    from .._base_.default_runtime import *
    from ._base_.market1501 import *
    from ._base_.reid_target import *

num_clusters = 700
model = dict(type=CoreReIDTargetModel, backbone='resnet101', num_classes=num_clusters, last_stride=1,
             source_checkpoint='work_dirs/source_r101_cuhk03/epoch_120.pth')
train_dataloader = dict(batch_size=batch_size, num_workers=4, persistent_workers=True, sampler=pk_sampler,
                        collate_fn=dict(type=reid_collate), dataset=dict(**market1501_train, pipeline=train_pipeline))
cluster_dataloader = dict(**test_loader_base, dataset=dict(**market1501_train, pipeline=test_pipeline))
test_dataloader = dict(**test_loader_base,
                       dataset=dict(type=ReIDTestDataset, query=dict(**market1501_query, pipeline=test_pipeline),
                                    gallery=dict(**market1501_gallery, pipeline=test_pipeline)))
val_dataloader = test_dataloader
custom_hooks.append(dict(type=ClusteringHook, dataloader=cluster_dataloader, num_clusters=num_clusters, seed=1))
