# Smoke run of ParaTransCNN on synthetic organ/vessel slices: trains on a CPU in a few minutes. The official
# architecture with its ResNet-34 branch (from scratch) and a slimmer transformer pyramid (dim 32, one block per
# level, 2 heads) at 64x64; the official loss and optimiser with lr 0.05 (from scratch, 0.01 learns too slowly for a
# smoke run), 4 epochs of 16 iterations.
from mmengine.config import read_base
from visionattn.heads.segmentation.losses import CEDiceLoss
from visionattn.heads.segmentation.medical_task import MedicalSegmentor
from visionattn.heads.segmentation.paratranscnn import ParaTransCNN
from visionattn.heads.segmentation.task import SegDataPreprocessor

with read_base():
    from .._base_.default_runtime import *
    from ._base_.sgd_poly_medical import *
    from ._base_.synthetic_slices import *

max_epochs = 4
model = dict(
    type=MedicalSegmentor,
    network=dict(type=ParaTransCNN, num_classes=num_classes, dim=32, depth=(1, 1, 1), heads=2),
    num_classes=num_classes,
    loss=dict(type=CEDiceLoss, num_classes=num_classes, ce_weight=0.5, dice_weight=0.5),
    data_preprocessor=dict(type=SegDataPreprocessor, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
)
optim_wrapper.optimizer.update(lr=0.05)
train_cfg.update(max_epochs=max_epochs, val_interval=2)
param_scheduler[0].update(end=max_epochs)
default_hooks.checkpoint.update(interval=2)
default_hooks.logger.update(interval=4)
