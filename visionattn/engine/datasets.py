"""The data package's datasets, registered for configs that name them by string."""
from visionattn.data import (
    ADE20KDataset,
    CocoDetection,
    SegFolderDataset,
    SyntheticCocoDetection,
    SyntheticShapesDataset,
)

from .registry import DATASETS

DATASETS.register_module(module=ADE20KDataset)
DATASETS.register_module(module=SegFolderDataset)
DATASETS.register_module(module=SyntheticShapesDataset)
DATASETS.register_module(module=CocoDetection)
DATASETS.register_module(module=SyntheticCocoDetection)
