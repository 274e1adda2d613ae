"""Learned image compression data: random crops for training and whole photos for evaluation.

Without a ``data_root`` both sets use the colour photos that scikit-image ships, with a fixed split:
train on rocket, hubble_deep_field, immunohistochemistry, retina, stereo_motorcycle (left view) and colorwheel;
evaluate on astronaut, chelsea and coffee (held out). With a ``data_root`` they read every image of that folder
(give the training and evaluation folders separately, e.g. a crop set and Kodak).
"""
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from visionattn.data.base import SeededDataset, load_image

__all__ = ['TRAIN_PHOTOS', 'HELD_OUT_PHOTOS', 'load_photo', 'load_images', 'CompressionCropDataset',
           'CompressionEvalDataset']

TRAIN_PHOTOS = ('rocket', 'hubble_deep_field', 'immunohistochemistry', 'retina', 'stereo_motorcycle', 'colorwheel')
HELD_OUT_PHOTOS = ('astronaut', 'chelsea', 'coffee')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 (H, W, 3); stereo pairs give their left view."""
    import skimage.data

    if not hasattr(skimage.data, name):
        raise ValueError(f'skimage.data has no photo {name!r}')
    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f'skimage.data.{name} is not a colour photo (shape {image.shape})')
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def load_images(data_root: Optional[str], photos: Sequence[str]) -> List[Tuple[str, np.ndarray]]:
    """(name, uint8 HxWx3) pairs: every image file of ``data_root`` (sorted), else the named scikit-image photos."""
    if data_root is None:
        return [(name, load_photo(name)) for name in photos]

    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f'image folder {str(root)!r} does not exist')
    files = sorted(p for p in root.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {str(root)!r}')
    return [(str(p.relative_to(root)), load_image(p)) for p in files]


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


class CompressionCropDataset(SeededDataset):
    """Random square crops (with a random horizontal flip), a photo drawn uniformly per item.

    Item ``i`` is a pure function of (seed, epoch, i), so runs repeat whatever the workers. Items are
    ``{'img': uint8 (3, crop, crop), 'meta': {'index', 'name'}}``.

    Args:
        data_root: Image folder; None uses scikit-image's training photos (:data:`TRAIN_PHOTOS`).
        crop_size: Side of the crops (multiples of 64 suit S2LIC).
        length: Items per epoch (the training loop is iteration based; this only sets the epoch length).
        photos: scikit-image photo names when ``data_root`` is None.
        seed: Seed of the crop draws.
        pipeline: Optional extra transform applied to the uint8 tensor.
    """

    def __init__(self, data_root: Optional[str] = None, crop_size: int = 256, length: int = 10000,
                 photos: Sequence[str] = TRAIN_PHOTOS, seed: int = 0,
                 pipeline: Union[None, Callable, Mapping] = None):
        super().__init__(pipeline=pipeline, seed=seed)
        if crop_size < 1 or length < 1:
            raise ValueError(f'crop_size and length must be positive, got {crop_size} and {length}')
        self.crop_size, self.length = crop_size, length
        self.images = load_images(data_root, photos)
        small = [f'{name} ({img.shape[0]}x{img.shape[1]})' for name, img in self.images
                 if min(img.shape[:2]) < crop_size]
        if small:
            raise ValueError(f'images smaller than the {crop_size}x{crop_size} crop: {", ".join(small)}')

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < self.length:
            raise IndexError(f'index {index} out of range for {self.length} items')
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        name, image = self.images[int(rng.integers(len(self.images)))]
        top = int(rng.integers(image.shape[0] - self.crop_size + 1))
        left = int(rng.integers(image.shape[1] - self.crop_size + 1))
        patch = image[top:top + self.crop_size, left:left + self.crop_size]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        img = _to_tensor(patch)
        if self.pipeline is not None:
            self.seed_pipeline(index)
            img = self.pipeline(img)
        return {'img': img, 'meta': {'index': index, 'name': name}}


class CompressionEvalDataset(SeededDataset):
    """Whole photos for rate-distortion evaluation, brought to multiples of ``multiple`` pixels.

    ``mode='crop'`` takes the centred multiple-of-64 crop (what tools/s2lic_quick.py evaluates, so codecs see the
    same pixels); ``mode='pad'`` pads with edge replication and records the original size in ``meta['ori_size']``
    (the task model then measures bpp and quality on the original pixels, as CompressAI's evaluation does).

    Args:
        data_root: Image folder; None uses the held-out scikit-image photos (:data:`HELD_OUT_PHOTOS`).
        multiple: Both sides become multiples of this (64 for S2LIC: x16 latent, x4 hyper latent).
        mode: 'crop' or 'pad'.
        photos: scikit-image photo names when ``data_root`` is None.
    """

    def __init__(self, data_root: Optional[str] = None, multiple: int = 64, mode: str = 'crop',
                 photos: Sequence[str] = HELD_OUT_PHOTOS, seed: int = 0):
        super().__init__(pipeline=None, seed=seed)
        if mode not in ('crop', 'pad'):
            raise ValueError(f"mode must be 'crop' or 'pad', got {mode!r}")
        if multiple < 1:
            raise ValueError(f'multiple must be positive, got {multiple}')
        self.multiple, self.mode = multiple, mode
        self.images = load_images(data_root, photos)
        if mode == 'crop':
            small = [f'{name} ({img.shape[0]}x{img.shape[1]})' for name, img in self.images
                     if min(img.shape[:2]) < multiple]
            if small:
                raise ValueError(f'images smaller than {multiple} pixels cannot be cropped to a multiple of it: '
                                 f'{", ".join(small)}; use mode="pad"')

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict:
        name, image = self.images[index]
        height, width = image.shape[:2]
        if self.mode == 'crop':
            new_h, new_w = height - height % self.multiple, width - width % self.multiple
            top, left = (height - new_h) // 2, (width - new_w) // 2
            image = image[top:top + new_h, left:left + new_w]
            ori_size = (new_h, new_w)
        else:
            pad_h, pad_w = -height % self.multiple, -width % self.multiple
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode='edge')
            ori_size = (height, width)
        return {'img': _to_tensor(image), 'meta': {'index': index, 'name': name, 'ori_size': ori_size}}
