"""Datasets and augmentation pipelines (albumentations) for the task tools; plain PyTorch datasets, no engine."""
from .base import SeededDataset, SharedEpoch, build_pipeline
from .detection import CocoDetection, SyntheticCocoDetection, detection_transforms, make_synthetic_coco
from .seg_transforms import segmentation_transforms
from .segmentation import ADE20KDataset, SegFolderDataset, SyntheticShapesDataset
from .transforms import TimmTransforms, classification_transforms

__all__ = ['SeededDataset', 'SharedEpoch', 'build_pipeline']
__all__ += ['TimmTransforms', 'classification_transforms']
__all__ += ['ADE20KDataset', 'SegFolderDataset', 'SyntheticShapesDataset', 'segmentation_transforms']
__all__ += ['CocoDetection', 'SyntheticCocoDetection', 'detection_transforms', 'make_synthetic_coco']
