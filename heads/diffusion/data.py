"""Paired data for (controlled) diffusion: an image, its class and its Canny edge map (RelaCtrl's canny control).

Items are ``{'img': uint8 [3, H, W], 'gt_label': int, 'control': uint8 [1, H, W] (0/255 edges), 'meta': dict}``.
The datasets are registered by :mod:`visionattn.heads.diffusion.task`.
"""
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

import numpy as np
import torch
from skimage.draw import disk, polygon
from skimage.feature import canny

from visionattn.data.base import SeededDataset, load_image

__all__ = ['canny_edges', 'SyntheticDiffusionPairs', 'ImageFolderCannyDataset']

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')


def canny_edges(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Binary Canny edges (bool [H, W]) of an RGB uint8 [H, W, 3] or grey [H, W] image (skimage, default
    hysteresis thresholds on the luminance in [0, 1])."""
    image = np.asarray(image)
    # Canny's thresholds are absolute, on [0, 1]: a 16-bit image gave edges everywhere, NaN none near it
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f'expected a uint8 (or 0..255 float) image, got {image.dtype}')
    if image.dtype != np.uint8 and image.size and not (np.isfinite(image).all() and 0 <= image.min()
                                                       and image.max() <= 255):
        raise ValueError(f'a float image must be finite and in [0, 255], got values in [{image.min()}, '
                         f'{image.max()}]')
    if image.ndim == 3:
        if image.shape[-1] != 3:
            raise ValueError(f'expected an image [H, W, 3] or [H, W], got {image.shape}')
        image = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    elif image.ndim != 2:
        raise ValueError(f'expected an image [H, W, 3] or [H, W], got {image.shape}')
    return canny(image.astype(np.float32) / 255.0, sigma=sigma)


def _item(image: np.ndarray, label: int, index: int, sigma: float) -> Dict:
    edges = canny_edges(image, sigma)
    return {'img': torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            'gt_label': int(label),
            'control': torch.from_numpy(edges.astype(np.uint8)[None] * 255),
            'meta': {'index': index}}


class SyntheticDiffusionPairs(SeededDataset):
    """One filled shape (disk, square or triangle: the class) of a random colour, size and place on a smooth
    two-colour gradient, with its Canny edges as the control. Deterministic per (seed, index).

    Args:
        num_samples: Dataset length.
        img_size: Side in pixels (>= 16).
        seed: Seed of the drawing.
        canny_sigma: Gaussian sigma of the Canny detector.
    """
    classes = ('disk', 'square', 'triangle')

    def __init__(self, num_samples: int = 1024, img_size: int = 32, seed: int = 0, canny_sigma: float = 1.0):
        super().__init__(pipeline=None, seed=seed)
        for name, value in (('num_samples', num_samples), ('img_size', img_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f'{name} must be an integer, got {value!r}')
        if not canny_sigma >= 0:
            raise ValueError(f'canny_sigma must be >= 0, got {canny_sigma}')
        if img_size < 16:
            raise ValueError(f'img_size must be at least 16 pixels, got {img_size}')
        if num_samples < 1:
            raise ValueError(f'num_samples must be positive, got {num_samples}')
        self.num_samples, self.img_size, self.canny_sigma = num_samples, img_size, canny_sigma

    def __len__(self) -> int:
        return self.num_samples

    def draw(self, index: int) -> Tuple[np.ndarray, int]:
        rng = np.random.default_rng([self.seed, index])
        size = self.img_size
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        weight = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
        weight = (weight - weight.min()) / max(float(weight.max() - weight.min()), 1e-6)
        colour_a, colour_b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        image = colour_a * (1 - weight[..., None]) + colour_b * weight[..., None]
        label = int(rng.integers(len(self.classes)))
        radius = rng.uniform(0.18, 0.32) * size
        cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
        if label == 0:
            rows, cols = disk((cy, cx), radius, shape=(size, size))
        else:
            corners = 4 if label == 1 else 3
            phase = rng.uniform(0, 2 * np.pi)
            angles = phase + np.arange(corners) * 2 * np.pi / corners
            rows, cols = polygon(cy + radius * np.sin(angles), cx + radius * np.cos(angles), shape=(size, size))
        # a shape colour far from the background under it, so its outline is a clear edge
        shape_colour = (np.mean([colour_a, colour_b], axis=0) + 128) % 256
        under = image[rows, cols]
        image[rows, cols] = shape_colour
        drawn = np.clip(image, 0, 255).astype(np.uint8)
        if not canny_edges(drawn, self.canny_sigma).any():
            # about 1 in 300 colours differ from the background in hue only: Canny (on the luminance) found no edge,
            # so the control map was empty. Such a shape becomes white or black, whichever is farther.
            luma = under @ np.array([0.299, 0.587, 0.114])
            image[rows, cols] = 255.0 if 255 - luma.max() > luma.min() else 0.0
            drawn = np.clip(image, 0, 255).astype(np.uint8)
        return drawn, label

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f'index {index} out of range for {self.num_samples} samples')
        image, label = self.draw(index)
        return _item(image, label, index, self.canny_sigma)


class ImageFolderCannyDataset(SeededDataset):
    """Images under ``root`` (class sub-folders give labels, else label 0), resized (short side) and centre-cropped
    to ``img_size``, with their Canny edges as the control.

    Args:
        root: Folder of images, or of class folders of images.
        img_size: Output side.
        canny_sigma: Gaussian sigma of the Canny detector.
        flip: Random horizontal flip (DiT's training augmentation), drawn per (seed, epoch, index).
        extensions: Image file suffixes.
        seed: Seed of the flips.
    """

    def __init__(self, root: Union[str, Path], img_size: int = 256, canny_sigma: float = 2.0, flip: bool = False,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, seed: int = 0):
        super().__init__(pipeline=None, seed=seed)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f'image folder {str(root)!r} does not exist')
        # Hidden folders (.ipynb_checkpoints, .git) are no classes: taken, they would shift every label after them.
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))

        def images(folder: Path) -> list:
            return sorted(p for p in folder.iterdir() if p.suffix.lower() in extensions and p.is_file())
        loose = images(root)
        if folders and loose:
            raise ValueError(f'{root} holds both class folders ({", ".join(p.name for p in folders[:3])}, ...) and '
                             f'{len(loose)} images beside them (e.g. {loose[0].name}): the images would be left out; '
                             'move them into a class folder, or point root at one layout')
        self.classes = tuple(p.name for p in folders) or ('image',)
        groups = [(i, f) for i, f in enumerate(folders)] or [(0, root)]
        self.samples = [(path, label) for label, folder in groups for path in images(folder)]
        if not self.samples:
            raise FileNotFoundError(f'no images ({", ".join(extensions)}) under {root}')
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if folders and empty:
            raise ValueError(f'class folders without images ({", ".join(extensions)}) under {root}: '
                             f'{", ".join(empty)}; each folder is a class label, so remove the empty ones')
        self.img_size, self.canny_sigma, self.flip = img_size, canny_sigma, flip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict:
        from PIL import Image
        path, label = self.samples[index]
        img = Image.fromarray(load_image(path))  # (an unreadable file is named; 16-bit scaled, float refused)
        scale = self.img_size / min(img.size)
        img = img.resize((max(self.img_size, round(img.width * scale)),
                          max(self.img_size, round(img.height * scale))), Image.BICUBIC)
        left, top = (img.width - self.img_size) // 2, (img.height - self.img_size) // 2
        image = np.asarray(img.crop((left, top, left + self.img_size, top + self.img_size)), dtype=np.uint8)
        if self.flip and np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5:
            image = image[:, ::-1]
        item = _item(image, label, index, self.canny_sigma)
        item['meta']['path'] = str(path)
        return item
