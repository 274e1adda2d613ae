"""Datasets and augmentation pipelines (albumentations) for the task tools; plain PyTorch datasets, no engine."""
from .base import SeededDataset, SharedEpoch, build_pipeline
from .transforms import TimmTransforms, classification_transforms

__all__ = ['SeededDataset', 'SharedEpoch', 'build_pipeline']
__all__ += ['TimmTransforms', 'classification_transforms']
