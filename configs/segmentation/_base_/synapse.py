# Synapse multi-organ CT (9 classes) in the official ParaTransCNN/TransUNet layout: <data_root>/train_npz/*.npz
# slices (2,211 from 18 cases), <data_root>/test_vol_h5/*.npy.h5 volumes (12 cases), lists in
# <data_root>/lists/lists_Synapse/{train,test_vol}.txt. Official augmentation (rot90+flip or a +-20 degree rotation)
# and 224x224 input; test slices are resized for the network and scored at 512x512 per volume (Dice, HD95).
from mmengine.dataset import DefaultSampler
from visionattn.heads.segmentation.medical_data import SynapseDataset, medical_transforms
from visionattn.heads.segmentation.medical_task import DiceHD95Metric
from visionattn.heads.segmentation.task import seg_collate

data_root = 'data/Synapse'
img_size = 224
num_classes = 9
# Workers are not persistent: they are forked anew each epoch with the dataset's epoch, on which the per-sample
# augmentation seeds depend (persistent workers would keep drawing epoch 0's augmentations).
train_dataloader = dict(
    batch_size=4, num_workers=8, persistent_workers=False,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=SynapseDataset, data_root=data_root, split='train',
                 pipeline=dict(type=medical_transforms, train=True, img_size=img_size)),
)
test_dataloader = dict(
    batch_size=16, num_workers=2, persistent_workers=False,
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=seg_collate),
    dataset=dict(type=SynapseDataset, data_root=data_root, split='test_vol',
                 pipeline=dict(type=medical_transforms, train=False, img_size=img_size, keep_mask_size=True)),
)
val_dataloader = test_dataloader
test_evaluator = dict(type=DiceHD95Metric)
val_evaluator = test_evaluator
