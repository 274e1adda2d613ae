"""Semantic and medical segmentation: ParaTransCNN, UPerNet and Semantic FPN fed by any zoo backbone, the whole task.

Modules: ``decoders`` and ``paratranscnn`` (the networks) and ``losses`` need PyTorch and timm only; ``data`` (image and
mask folders, ADE20K, synthetic shapes), ``transforms`` (mmseg's ADE20K pipelines in albumentations), ``task``
(collate, data preprocessor, the Segmentor task model, its default loss and the ``--show-dir`` overlay hook) and
``evaluation`` (the mIoU metric) need the ``[train]`` extra. The medical task: ``medical_task`` (the mmengine task
model and the per-volume Dice/HD95 metric) needs the ``[train]`` extra; ``medical_data`` (the Synapse, AVT and
synthetic slice datasets) needs albumentations for its augmentation and h5py for the test volumes (the
``[segmentation]`` extra). ``mmseg_compat`` puts the zoo backbones into mmsegmentation. This file imports the networks
and losses only.
"""
from .decoders import FeatureBackbone, SemanticFPN, UPerNet
from .losses import CEDiceLoss, DiceLoss
from .paratranscnn import ParaTransCNN

__all__ = ['FeatureBackbone', 'SemanticFPN', 'UPerNet', 'CEDiceLoss', 'DiceLoss', 'ParaTransCNN']
