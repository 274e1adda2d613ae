"""Semantic and medical segmentation heads: ParaTransCNN, UPerNet and Semantic FPN fed by any zoo backbone."""
from .decoders import FeatureBackbone, SemanticFPN, UPerNet
from .losses import CEDiceLoss, DiceLoss
from .paratranscnn import ParaTransCNN

__all__ = ['FeatureBackbone', 'SemanticFPN', 'UPerNet', 'CEDiceLoss', 'DiceLoss', 'ParaTransCNN']
