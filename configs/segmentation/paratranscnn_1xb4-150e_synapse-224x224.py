# ParaTransCNN on Synapse, the official recipe (HongkunSun/ParaTransCNN train.py/trainer.py): ResNet-34 branch with
# torchvision's ImageNet weights, dim 320, depth 3 per level, 8 heads; 0.5 CE + 0.5 Dice; SGD lr 0.01 poly 0.9,
# 150 epochs, batch 4, 224x224; grey slices repeated to 3 channels and fed in [0, 1] (no mean/std normalisation).
# Official result: DSC 83.86%, HD95 15.86 (the model after 146 epochs).
from mmengine.config import read_base
from visionattn.heads.segmentation.losses import CEDiceLoss
from visionattn.heads.segmentation.medical_task import MedicalSegmentor
from visionattn.heads.segmentation.paratranscnn import ParaTransCNN
from visionattn.heads.segmentation.task import SegDataPreprocessor

with read_base():
    from .._base_.default_runtime import *
    from ._base_.sgd_poly_medical import *
    from ._base_.synapse import *

model = dict(
    type=MedicalSegmentor,
    network=dict(type=ParaTransCNN, num_classes=num_classes, pretrained=True),
    num_classes=num_classes,
    loss=dict(type=CEDiceLoss, num_classes=num_classes, ce_weight=0.5, dice_weight=0.5),
    data_preprocessor=dict(type=SegDataPreprocessor, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
)
default_hooks.checkpoint.update(interval=1, max_keep_ckpts=5)  # the official run keeps its last five epochs
default_hooks.logger.update(interval=20)
