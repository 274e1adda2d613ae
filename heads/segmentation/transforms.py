"""Albumentations pipelines for semantic segmentation, transforming image and mask together.

The training pipeline is mmsegmentation's ADE20K one, which the BiFormer and NAT results used: resize keeping the
aspect ratio to ``img_scale`` times a ratio drawn from ``scale`` (0.5-2), random crop in which no class covers more
than ``cat_max_ratio`` of the labelled pixels (up to 10 tries), horizontal flip, photometric distortion, and padding
to the crop size (image with the mean colour, i.e. 0 once normalised as mmseg pads; mask with 255). The test
pipeline resizes keeping the aspect ratio to ``img_scale``. Outputs are uint8 HWC images and integer masks;
normalisation happens on the device in the data preprocessor
(:class:`~visionattn.heads.segmentation.task.SegDataPreprocessor`).
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

__all__ = ['segmentation_transforms', 'RatioRangeResize', 'CatMaxRatioCrop', 'PhotoMetricDistortion']

IMAGENET_MEAN_UINT8 = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))


def _rescaled_size(height: int, width: int, scale: Sequence[int], ratio: float) -> Tuple[int, int]:
    # mmcv's imrescale: the largest factor that fits (long, short) = ratio * scale, rounded half up.
    long_edge, short_edge = max(scale) * ratio, min(scale) * ratio
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RatioRangeResize(A.DualTransform):
    """Resize keeping the aspect ratio to ``ratio * img_scale``, ratio uniform in ``ratio_range`` (mmseg's
    ``Resize(img_scale, ratio_range, keep_ratio=True)``); bilinear for the image, nearest for the mask."""

    def __init__(self, img_scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 p: float = 1.0):
        super().__init__(p=p)
        if len(img_scale) != 2 or min(img_scale) < 1:
            raise ValueError(f'img_scale must be two positive sizes, got {img_scale}')
        if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
            raise ValueError(f'ratio_range must be (low, high) with 0 < low <= high, got {ratio_range}')
        self.img_scale = tuple(img_scale)
        self.ratio_range = tuple(ratio_range)

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params['shape'][:2]
        low, high = self.ratio_range
        ratio = low if low == high else self.py_random.uniform(low, high)
        return {'size': _rescaled_size(height, width, self.img_scale, ratio)}

    def apply(self, img: np.ndarray, size: Tuple[int, int], **params) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: Tuple[int, int], **params) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('img_scale', 'ratio_range')


class CatMaxRatioCrop(A.DualTransform):
    """Random crop of at most ``crop_size`` (smaller images are cropped to their size) that is redrawn, up to 10
    times, while one class covers more than ``cat_max_ratio`` of the labelled pixels (mmseg's RandomCrop)."""

    def __init__(self, crop_size: Sequence[int], cat_max_ratio: float = 0.75, ignore_index: int = 255,
                 p: float = 1.0):
        super().__init__(p=p)
        self.crop_size = tuple(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _draw(self, height: int, width: int) -> Tuple[int, int, int, int]:
        crop_h, crop_w = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = self.py_random.randint(0, height - crop_h)
        left = self.py_random.randint(0, width - crop_w)
        return top, top + crop_h, left, left + crop_w

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params['shape'][:2]
        box = self._draw(height, width)
        mask = data.get('mask')
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(10):
                patch = mask[box[0]:box[1], box[2]:box[3]]
                _, counts = np.unique(patch[patch != self.ignore_index], return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._draw(height, width)
        return {'box': box}

    def apply(self, img: np.ndarray, box: Tuple[int, int, int, int], **params) -> np.ndarray:
        return np.ascontiguousarray(img[box[0]:box[1], box[2]:box[3]])

    def apply_to_mask(self, mask: np.ndarray, box: Tuple[int, int, int, int], **params) -> np.ndarray:
        return np.ascontiguousarray(mask[box[0]:box[1], box[2]:box[3]])

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('crop_size', 'cat_max_ratio', 'ignore_index')


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg's PhotoMetricDistortion on uint8 RGB: each step with probability 1/2 - brightness +-delta,
    contrast x[low, high] (before or after the HSV steps, drawn), saturation x[low, high] and hue +-delta on
    OpenCV's 0-180 hue scale - clipping to 0..255 after each step."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18, p: float = 1.0):
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def get_params(self) -> Dict[str, Any]:
        rnd = self.py_random
        coin = lambda: rnd.random() < 0.5  # noqa: E731
        return {
            'brightness': rnd.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
            'contrast_first': coin(),
            'contrast': rnd.uniform(*self.contrast_range) if coin() else None,
            'saturation': rnd.uniform(*self.saturation_range) if coin() else None,
            'hue': rnd.randint(-self.hue_delta, self.hue_delta) if coin() else None,
        }

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(self, img: np.ndarray, brightness=None, contrast_first=True, contrast=None, saturation=None,
              hue=None, **params) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f'PhotoMetricDistortion needs uint8 RGB images, got {img.dtype} {img.shape}')
        if brightness is not None:
            img = self._convert(img, beta=brightness)
        if contrast is not None and contrast_first:
            img = self._convert(img, alpha=contrast)
        if saturation is not None or hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[..., 1] = self._convert(hsv[..., 1], alpha=saturation)
            if hue is not None:
                hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + hue) % 180).astype(np.uint8)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if contrast is not None and not contrast_first:
            img = self._convert(img, alpha=contrast)
        return img

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('brightness_delta', 'contrast_range', 'saturation_range', 'hue_delta')


def segmentation_transforms(train: bool, crop_size: Sequence[int] | int, scale: Sequence[float] = (0.5, 2.0),
                            img_scale: Optional[Sequence[int]] = (2048, 512), cat_max_ratio: float = 0.75,
                            hflip: float = 0.5, photometric: bool = True, ignore_index: int = 255,
                            pad_fill: Sequence[int] = IMAGENET_MEAN_UINT8) -> A.Compose:
    """mmseg's ADE20K pipelines in albumentations; call as ``pipeline(image=hwc_uint8, mask=hw)``.

    Args:
        train: Training (random) or test (deterministic resize) pipeline.
        crop_size: Training crop (H, W), or one int for a square; padded up to it where the image is smaller.
        scale: Range of the random resize ratio applied to ``img_scale`` (training).
        img_scale: (long, short) edge bounds of the resize at ratio 1 (mmseg's ``img_scale=(2048, 512)`` for
            ADE20K); None skips resizing.
        cat_max_ratio: Largest share one class may cover in a training crop (redrawn up to 10 times); 1 turns
            the check off.
        hflip: Horizontal flip probability.
        photometric: Apply :class:`PhotoMetricDistortion`.
        ignore_index: Mask value of padding and ignored pixels.
        pad_fill: Image padding colour (the ImageNet mean, which normalises to 0).
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    if len(crop) != 2 or min(crop) < 1:
        raise ValueError(f'crop_size must be a positive int or (H, W), got {crop_size}')
    if not train:
        return A.Compose([RatioRangeResize(img_scale, (1.0, 1.0))] if img_scale is not None else [])
    ops = []
    if img_scale is not None:
        ops.append(RatioRangeResize(img_scale, scale))
    ops.append(CatMaxRatioCrop(crop, cat_max_ratio, ignore_index))
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if photometric:
        ops.append(PhotoMetricDistortion())
    ops.append(A.PadIfNeeded(min_height=crop[0], min_width=crop[1], position='top_left',
                             border_mode=cv2.BORDER_CONSTANT, fill=tuple(pad_fill), fill_mask=ignore_index))
    return A.Compose(ops)
