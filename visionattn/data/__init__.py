"""Datasets and augmentation pipelines (albumentations) for the task tools; plain PyTorch datasets, no engine."""
from .classification import DigitsDataset, ImageFolderDataset
from .transforms import classification_transforms, trivial_augment_like

__all__ = ['DigitsDataset', 'ImageFolderDataset', 'classification_transforms', 'trivial_augment_like']
