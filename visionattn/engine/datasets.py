"""The data package's datasets, registered for configs that name them by string."""
from visionattn.data import DigitsDataset, ImageFolderDataset

from .registry import DATASETS

DATASETS.register_module(module=DigitsDataset)
DATASETS.register_module(module=ImageFolderDataset)
