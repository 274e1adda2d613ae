# Smoke run of CORE-ReID's target fine-tuning on the synthetic 'target' pedestrians (runs on a CPU in a few minutes),
# from the checkpoint of source_r18_synthetic.py: ResNet-18 with last stride 1 at 64x32, K = 16 clusters (the number
# of target identities), the official losses, mean teacher and optimiser, 4 epochs of 8 PK batches (4 pseudo-
# identities x 4 images), clustering before each epoch. Tested on the target domain's query/gallery.
#   python tools/train.py configs/reid/source_r18_synthetic.py
#   python tools/train.py configs/reid/core_reid_r18_synthetic.py
from mmengine.config import read_base
from mmengine.dataset import DefaultSampler
from visionattn.heads.reid.data import ReIDTestDataset, reid_transforms
from visionattn.heads.reid.evaluation import PKSampler, reid_collate
from visionattn.heads.reid.task import ClusteringHook, CoreReIDTargetModel

with read_base():
    from .._base_.default_runtime import *
    from ._base_.reid_target import *
    from ._base_.synthetic_pedestrians import *

max_epochs = 4
iters_per_epoch = 8
batch_size = 16
img_size = (64, 32)
num_clusters = synthetic_num_ids
model = dict(type=CoreReIDTargetModel, backbone='resnet18', num_classes=num_clusters, last_stride=1,
             source_checkpoint='work_dirs/source_r18_synthetic/epoch_6.pth')
train_dataloader = dict(
    batch_size=batch_size, num_workers=0,
    sampler=dict(type=PKSampler, batch_size=batch_size, num_instances=4, num_batches=iters_per_epoch),
    collate_fn=dict(type=reid_collate),
    dataset=dict(**synthetic_target_train,
                 pipeline=dict(type=reid_transforms, train=True, img_size=img_size, random_erasing=0.5, pad=4,
                               gray_patch=0.4)),
)
cluster_dataloader = dict(
    batch_size=64, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=reid_collate), dataset=synthetic_target_train,
)
test_dataloader = dict(
    batch_size=64, num_workers=0, sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=reid_collate),
    dataset=dict(type=ReIDTestDataset, query=synthetic_target_query, gallery=synthetic_target_gallery),
)
val_dataloader = test_dataloader
custom_hooks.append(dict(type=ClusteringHook, dataloader=cluster_dataloader, num_clusters=num_clusters, seed=0))
train_cfg.update(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks.checkpoint.update(interval=max_epochs)
default_hooks.logger.update(interval=4)
