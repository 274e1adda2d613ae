"""Albumentations pipelines for classification. They output uint8 HWC images at the model's input size:
normalisation with the model's pretrained mean/std happens on the device, in the engine's data preprocessor."""
from typing import Optional, Sequence

import albumentations as A
import cv2

__all__ = ['classification_transforms', 'trivial_augment_like']

_INTERPOLATION = {'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC, 'nearest': cv2.INTER_NEAREST}


def trivial_augment_like() -> A.BaseCompose:
    """One photometric or geometric op per image, drawn uniformly, at a magnitude drawn uniformly from its range.

    This follows TrivialAugment (Müller & Hutter, ICCV 2021: one op, uniform magnitude, no search) with the ops
    albumentations provides; the op set and ranges are close to TrivialAugmentWide's, not identical to them.
    """
    return A.OneOf([
        A.NoOp(),
        A.Affine(rotate=(-30, 30), p=1.0),
        A.Affine(shear={'x': (-17, 17), 'y': (0, 0)}, p=1.0),
        A.Affine(shear={'x': (0, 0), 'y': (-17, 17)}, p=1.0),
        A.Affine(translate_percent={'x': (-0.3, 0.3), 'y': (0, 0)}, p=1.0),
        A.Affine(translate_percent={'x': (0, 0), 'y': (-0.3, 0.3)}, p=1.0),
        A.ColorJitter(brightness=0.9, contrast=0, saturation=0, hue=0, p=1.0),
        A.ColorJitter(brightness=0, contrast=0.9, saturation=0, hue=0, p=1.0),
        A.ColorJitter(brightness=0, contrast=0, saturation=0.9, hue=0, p=1.0),
        A.Sharpen(alpha=(0.1, 0.9), p=1.0),
        A.Posterize(num_bits=(2, 8), p=1.0),
        A.Solarize(threshold_range=(0.0, 1.0), p=1.0),
        A.Equalize(p=1.0),
        A.AutoContrast(p=1.0),
    ], p=1.0)


def classification_transforms(train: bool, img_size: int, crop_pct: float = 0.875,
                              scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.5,
                              auto_augment: Optional[str] = 'trivial', random_erasing: float = 0.0,
                              interpolation: str = 'bicubic') -> A.Compose:
    """The usual ImageNet pipelines: random resized crop, flip, TrivialAugment-like ops and random erasing for
    training; resize to ``img_size / crop_pct`` and centre crop for evaluation.

    Args:
        train: Training (random) or evaluation (deterministic) pipeline.
        img_size: Output side length.
        crop_pct: Evaluation crop fraction (timm's ``crop_pct``).
        scale: Area range of the random resized crop.
        hflip: Horizontal flip probability.
        auto_augment: 'trivial' for :func:`trivial_augment_like`, or None.
        random_erasing: Probability of erasing one random rectangle (timm's ``reprob``).
        interpolation: 'bicubic', 'bilinear' or 'nearest'.
    """
    if interpolation not in _INTERPOLATION:
        raise ValueError(f'interpolation {interpolation!r} is not one of {sorted(_INTERPOLATION)}')
    if auto_augment not in (None, 'trivial'):
        raise ValueError(f"auto_augment {auto_augment!r}: expected 'trivial' or None")
    interp = _INTERPOLATION[interpolation]
    if not train:
        return A.Compose([A.SmallestMaxSize(max_size=round(img_size / crop_pct), interpolation=interp),
                          A.CenterCrop(img_size, img_size)])
    ops = [A.RandomResizedCrop((img_size, img_size), scale=tuple(scale), interpolation=interp)]
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if auto_augment == 'trivial':
        ops.append(trivial_augment_like())
    if random_erasing > 0:
        ops.append(A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.1, 0.5),
                                   hole_width_range=(0.1, 0.5), fill='random_uniform', p=random_erasing))
    return A.Compose(ops)
