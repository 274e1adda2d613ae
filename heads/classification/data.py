"""Classification datasets: an ImageFolder layout, and scikit-learn's digits as the embedded default.

Each item is ``{'img': uint8 tensor [3, H, W], 'gt_label': int, 'index': int}``. Augmentation is seeded per
sample from (seed, epoch, index), so a run is reproducible whatever the number of workers or processes, and a
resumed run draws the same augmentations as an uninterrupted one.
"""
import numbers
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from visionattn.data.base import IMAGE_EXTENSIONS, SeededDataset, load_image

__all__ = ['DigitsDataset', 'ImageFolderDataset']


class _ClassificationDataset(SeededDataset):
    def _load(self, index: int) -> Tuple[np.ndarray, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):  # a negative index wrapped around and its item carried 'index' -1
            raise IndexError(f'index {index} out of range for {len(self)} items')
        image, label = self._load(index)
        if self.pipeline is not None:
            self.seed_pipeline(index)
            image = self.pipeline(image=image)['image']
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return {'img': img, 'gt_label': label, 'index': index}


class DigitsDataset(_ClassificationDataset):
    """scikit-learn's handwritten digits: 1,797 real 8x8 scans of 10 classes, shipped with scikit-learn.

    The images are scaled to uint8 RGB; the pipeline resizes them to the model's input. A fixed stratified split
    holds out ``test_fraction`` of the images.

    Args:
        split: 'train' or 'test'.
        pipeline: An albumentations-style callable ``pipeline(image=hwc_uint8)['image']``.
        test_fraction: Held-out fraction.
        seed: Seed of the augmentation draws (the split itself is fixed).
        max_samples: Keep only the first this many images of the split (for smoke tests).
    """
    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str = 'train', pipeline: Optional[Callable] = None, test_fraction: float = 0.2,
                 seed: int = 0, max_samples: Optional[int] = None):
        super().__init__(pipeline, seed)
        if split not in ('train', 'test'):
            raise ValueError(f"DigitsDataset split must be 'train' or 'test', got {split!r}")
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
            raise ValueError(f'DigitsDataset: test_fraction must be a fraction in (0, 1), got {test_fraction!r}')
        # [:max_samples] took max_samples=-1 as "all but the last" and 0 as an empty split, silently
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, numbers.Integral)
                                        or max_samples < 1):
            raise ValueError(f'DigitsDataset: max_samples must be a positive whole number or None, got '
                             f'{max_samples!r}')
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels to 0..255
        train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=test_fraction,
                                               stratify=digits.target, random_state=0)
        idx = (train_idx if split == 'train' else test_idx)[:max_samples]
        self.images = np.repeat(images[idx][..., None], 3, axis=-1)
        self.labels = digits.target[idx].astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, index):
        return self.images[index], int(self.labels[index])


class ImageFolderDataset(_ClassificationDataset):
    """Images in ``data_root/<split>/<class>/*.jpg`` (torchvision's ImageFolder layout).

    Args:
        data_root: Dataset root.
        split: Sub-folder of ``data_root`` ('train', 'val', ...), or '' for the root itself.
        pipeline: An albumentations-style callable.
        classes: Class names in label order (default: the sorted sub-folder names).
        seed: Seed of the augmentation draws.
    """

    def __init__(self, data_root: str, split: str = '', pipeline: Optional[Callable] = None,
                 classes: Optional[Sequence[str]] = None, seed: int = 0):
        super().__init__(pipeline, seed)
        root = Path(data_root).expanduser() / split
        if not root.is_dir():
            raise FileNotFoundError(f'ImageFolderDataset: no folder {root} (data_root={data_root!r}, '
                                    f'split={split!r}); expected <data_root>/<split>/<class>/<image>')
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.classes = tuple(classes) if classes is not None else tuple(found)
        missing = sorted(set(self.classes) - set(found))
        if missing:
            raise FileNotFoundError(f'ImageFolderDataset: {root} has no folder for classes {missing}')
        self.samples: List[Tuple[Path, int]] = [
            (path, label) for label, name in enumerate(self.classes) for path in sorted((root / name).rglob('*'))
            if path.suffix.lower() in IMAGE_EXTENSIONS]
        if not self.samples:
            raise FileNotFoundError(f'ImageFolderDataset: no images ({", ".join(IMAGE_EXTENSIONS)}) under {root}')

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index):
        path, label = self.samples[index]
        return load_image(path), label
