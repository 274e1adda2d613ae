"""Semantic and medical segmentation heads: ParaTransCNN, UPerNet and Semantic FPN fed by any zoo backbone.

The medical task lives here too: ``medical_task`` (the mmengine task model and the per-volume Dice/HD95 metric) needs
the ``[train]`` extra; ``medical_data`` (the Synapse, AVT and synthetic slice datasets) needs albumentations for its
augmentation and h5py for the test volumes (the ``[segmentation]`` extra). This file imports neither.
"""
from .decoders import FeatureBackbone, SemanticFPN, UPerNet
from .losses import CEDiceLoss, DiceLoss
from .paratranscnn import ParaTransCNN

__all__ = ['FeatureBackbone', 'SemanticFPN', 'UPerNet', 'CEDiceLoss', 'DiceLoss', 'ParaTransCNN']
