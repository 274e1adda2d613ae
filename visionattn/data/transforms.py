"""Classification pipelines. They output uint8 HWC images at the model's input size: normalisation with the model's
pretrained mean/std (and, for the ImageNet recipes, timm's random erasing) happens on the device, in the engine's
data preprocessor.

- :class:`TimmTransforms`: timm's own ImageNet transforms (``timm.data.create_transform``: random resized crop, flip,
  RandAugment / AutoAugment / AugMix or colour jitter; resize and centre crop for evaluation), as the official
  recipes build them. The ImageNet configs use these.
- :func:`classification_transforms`: a plain albumentations crop/flip/resize, for the small embedded datasets.
"""
import contextlib
import random
from typing import Dict, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = ['TimmTransforms', 'classification_transforms']

_INTERPOLATION = {'bilinear': cv2.INTER_LINEAR, 'bicubic': cv2.INTER_CUBIC, 'nearest': cv2.INTER_NEAREST}

# create_transform arguments that TimmTransforms sets itself, or that belong elsewhere.
_RESERVED = {
    're_prob': 'random erasing runs on the normalised batch on the device, as timm\'s train.py does it with its '
               'prefetcher: set model.random_erasing=dict(probability=..., mode=..., max_count=...) instead',
    're_mode': 'see re_prob', 're_count': 'see re_prob', 're_num_splits': 'see re_prob',
    'use_prefetcher': 'always on: the pipeline outputs uint8 images and the data preprocessor normalises them',
    'normalize': 'the data preprocessor normalises', 'separate': 'not supported', 'is_training': 'use train=',
    'input_size': 'use img_size=', 'no_aug': 'use train=False for the evaluation pipeline',
}


def _check_size(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{what} must be a positive integer (the output side length), got {value!r}')
    return int(value)


def _check_crop_pct(crop_pct, what: str, upper: Optional[float] = None) -> float:
    # timm reads crop_pct=0 as "use the default" (``crop_pct or DEFAULT_CROP_PCT``), and albumentations cannot centre
    # crop beyond the image: both would silently or obscurely ignore the value.
    if not isinstance(crop_pct, (int, float)) or not crop_pct > 0 or (upper is not None and crop_pct > upper):
        bound = f'(0, {upper}]' if upper is not None else '> 0'
        raise ValueError(f'{what}: crop_pct must be {bound}, got {crop_pct!r}')
    return float(crop_pct)


@contextlib.contextmanager
def _seeded(seed: int):
    """Seed python's, numpy's and torch's CPU generators (timm's transforms draw from all three: crops and RandAugment
    magnitudes from ``random``, RandAugment's op choice from ``np.random``, torchvision's flip and jitter from torch),
    and restore them afterwards, so loading never moves the training process's own random streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class TimmTransforms:
    """timm's ImageNet transforms (``timm.data.create_transform``) behind the datasets' pipeline interface
    (``pipeline(image=hwc_uint8)['image']``, seeded per sample by the dataset).

    They are built as timm's ``train.py`` builds them with its prefetcher (``use_prefetcher=True``): the output stays
    uint8, and normalisation and random erasing run on the device, as timm's ``PrefetchLoader`` does them (here in
    :class:`~visionattn.engine.ClsDataPreprocessor`, from ``ImageClassifier(random_erasing=...)``). Random erasing
    on the normalised image is exactly what the recipes that erase in the transform (DeiT's ``create_transform(...,
    re_prob=...)``) do too.

    Args:
        train: Training (random) or evaluation (resize + centre crop) pipeline.
        img_size: Output side length.
        crop_pct: Evaluation crop fraction: resize the shorter side to ``floor(img_size / crop_pct)``.
        interpolation: 'bicubic', 'bilinear', or for training 'random' (bilinear or bicubic per image, timm's).
        auto_augment: timm's policy string, e.g. 'rand-m9-mstd0.5-inc1' (RandAugment), 'original' (AutoAugment),
            'augmix-m5-w4-d2'; None for none. Colour jitter is off while a policy is on (timm's rule).
        color_jitter: timm's colour-jitter factor (0.4 is timm's default; None or 0 for none).
        multi_scale: ``(size, epoch)``: train at ``size`` before ``epoch`` (0-based) and at ``img_size`` from it, as
            FasterNet's ``multi_scale: 192_280``. The dataset passes the epoch (``set_epoch``).
        **kwargs: Any other argument of ``timm.data.create_transform`` (``scale``, ``ratio``, ``hflip``, ``vflip``,
            ``mean`` (fill of RandAugment's geometric ops), ``train_crop_mode``, ``crop_mode``, ...).
    """

    def __init__(self, train: bool, img_size: int = 224, crop_pct: float = 0.875, interpolation: str = 'bicubic',
                 auto_augment: Optional[str] = None, color_jitter: Optional[float] = 0.4,
                 multi_scale: Optional[Tuple[int, int]] = None, **kwargs):
        for key in kwargs:
            if key in _RESERVED:
                raise ValueError(f'TimmTransforms: {key!r} is not an argument here: {_RESERVED[key]}')
        img_size = _check_size(img_size, 'TimmTransforms: img_size')
        if not train:
            crop_pct = _check_crop_pct(crop_pct, 'TimmTransforms')
        for key in ('mean', 'std'):
            value = kwargs.get(key)
            if value is not None and (len(value) != 3 or (key == 'std' and min(value) <= 0)):
                raise ValueError(f'TimmTransforms: {key} must hold 3 (RGB) values{" > 0" if key == "std" else ""}, '
                                 f'got {tuple(value)}')
        if multi_scale is not None:
            if not train or len(multi_scale) != 2:
                raise ValueError(f'TimmTransforms: multi_scale=(size, epoch) is for training pipelines, '
                                 f'got {multi_scale!r}')
            _check_size(multi_scale[0], 'TimmTransforms: multi_scale size')
            if isinstance(multi_scale[1], bool) or not isinstance(multi_scale[1], (int, np.integer)) \
                    or multi_scale[1] < 0:
                raise ValueError(f'TimmTransforms: multi_scale epoch must be a non-negative integer, got '
                                 f'{multi_scale[1]!r}')
        self.train = train
        self.img_size = img_size
        self.multi_scale = tuple(multi_scale) if multi_scale is not None else None
        args = dict(is_training=train, interpolation=interpolation, use_prefetcher=True, **kwargs)
        if train:
            args.update(auto_augment=auto_augment, color_jitter=color_jitter)
        else:
            args.update(crop_pct=crop_pct)
        self._args = args
        self.transform = self._build(img_size)
        self._early = self._build(self.multi_scale[0]) if self.multi_scale else None
        self._seed: Optional[int] = None
        self._epoch = 0

    def _build(self, size: int):
        from timm.data import create_transform
        return create_transform(input_size=size, **self._args)

    def set_random_seed(self, seed: int) -> None:
        """The seed of the next call's draws (the dataset sets it per sample)."""
        self._seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        """The training epoch (the dataset sets it): picks the multi-scale size."""
        self._epoch = int(epoch)

    @property
    def current(self):
        """The torchvision ``Compose`` that the next call runs."""
        if self.multi_scale is not None and self._epoch < self.multi_scale[1]:
            return self._early
        return self.transform

    def __call__(self, image, **_) -> Dict[str, np.ndarray]:
        from PIL import Image
        pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        transform = self.current
        if self._seed is None:
            out = transform(pil)
        else:
            with _seeded(self._seed):
                out = transform(pil)
        if isinstance(out, torch.Tensor):  # timm's MaybePILToTensor: uint8 CHW
            out = out.permute(1, 2, 0).numpy()
        return {'image': np.asarray(out)}

    def __repr__(self) -> str:
        sizes = f', multi_scale={self.multi_scale}' if self.multi_scale else ''
        return f'{type(self).__name__}(img_size={self.img_size}{sizes}, {self.transform})'


def classification_transforms(train: bool, img_size: int, crop_pct: float = 0.875,
                              scale: Sequence[float] = (0.08, 1.0), hflip: float = 0.5,
                              interpolation: str = 'bicubic') -> A.Compose:
    """Random resized crop and flip for training; resize to ``img_size / crop_pct`` and centre crop for evaluation
    (albumentations, seeded per sample). The ImageNet recipes use :class:`TimmTransforms` instead.

    Args:
        train: Training (random) or evaluation (deterministic) pipeline.
        img_size: Output side length.
        crop_pct: Evaluation crop fraction (timm's ``crop_pct``).
        scale: Area range of the random resized crop.
        hflip: Horizontal flip probability.
        interpolation: 'bicubic', 'bilinear' or 'nearest'.
    """
    if interpolation not in _INTERPOLATION:
        raise ValueError(f'interpolation {interpolation!r} is not one of {sorted(_INTERPOLATION)}')
    img_size = _check_size(img_size, 'classification_transforms: img_size')
    if not train:
        crop_pct = _check_crop_pct(crop_pct, 'classification_transforms', upper=1.0)
    interp = _INTERPOLATION[interpolation]
    if not train:
        return A.Compose([A.SmallestMaxSize(max_size=round(img_size / crop_pct), interpolation=interp),
                          A.CenterCrop(img_size, img_size)])
    ops = [A.RandomResizedCrop((img_size, img_size), scale=tuple(scale), interpolation=interp)]
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    return A.Compose(ops)
