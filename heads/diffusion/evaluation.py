"""Offline metrics of diffusion samples (proxies; the RelaCtrl paper reports FID for quality and a Hausdorff-distance
control score, and DiT FID-50K): :class:`ControlFidelityMetric` is the F1 between the control edges and the Canny
edges of the generated image, matched within a pixel tolerance; :class:`SampleQualityMetric` is PSNR / SSIM of the
generated image against the real image of the same (label, control) pair, which only makes sense where the condition
pins the image down, as in the synthetic pairs.
"""
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric

from visionattn.engine.registry import METRICS

from .data import canny_edges

__all__ = ['edge_f1', 'ControlFidelityMetric', 'SampleQualityMetric', 'PSNR_MAX_DB', 'SSIM_WIN_SIZE']

# PSNR is capped here (as x264 caps it): identical images have an infinite PSNR, which made the mean over the samples
# inf and the relevance scores of tools/relevance_score.py NaN (inf - inf). Below the cap the value is exact; above
# it lie only images within 6.5e-6 levels^2 of MSE, e.g. one value one level off in over 153,787.
PSNR_MAX_DB = 100.0
SSIM_WIN_SIZE = 7  # skimage's default (uniform) SSIM window; smaller images get the largest odd window that fits


def as_numpy(x) -> np.ndarray:
    """A data sample's field as a NumPy array: tensors from the GPU (or needing grad) are detached and copied first."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _uint8_image(sample, key: str) -> np.ndarray:
    """``sample[key]`` as uint8 [C, ...]: the metrics' peak is 255, so [0, 1] or [-1, 1] floats would score as a
    near-black image (F1 0, PSNR ~6 dB) without any error."""
    image = as_numpy(sample[key])
    if image.dtype != np.uint8:
        raise ValueError(f'{key} must be a uint8 image [C, H, W] (what DiffusionModel.predict sets), got '
                         f'{image.dtype} {image.shape}')
    return image


def _binary(edges, name: str) -> np.ndarray:
    edges = np.asarray(edges)
    if edges.dtype != bool:
        values = np.unique(edges)
        # a soft edge map (probabilities) would count every non-zero pixel as an edge
        if len(values[values != 0]) > 1 or (values < 0).any() or np.isnan(values).any():
            raise ValueError(f'{name} must be a binary edge map (bool, or 0 and one positive value such as 1 or '
                             f'255), got values {values[:6].tolist()}{"..." if len(values) > 6 else ""}')
    return edges.astype(bool)


def edge_f1(pred_edges: np.ndarray, gt_edges: np.ndarray, tolerance: int = 1) -> Dict[str, float]:
    """Precision / recall / F1 of binary edge maps, a pixel counting as matched within ``tolerance`` pixels
    (chessboard distance) of an edge of the other map. Two empty maps score 1; one empty map scores 0."""
    from scipy.ndimage import binary_dilation
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f'tolerance must be a non-negative integer (pixels), got {tolerance!r}')
    pred_edges, gt_edges = _binary(pred_edges, 'pred_edges'), _binary(gt_edges, 'gt_edges')
    if pred_edges.shape != gt_edges.shape:
        raise ValueError(f'edge maps differ in shape: {pred_edges.shape} vs {gt_edges.shape}')
    if not pred_edges.any() and not gt_edges.any():
        return {'precision': 1.0, 'recall': 1.0, 'f1': 1.0}
    structure = np.ones((2 * tolerance + 1,) * 2, bool)
    near_gt = binary_dilation(gt_edges, structure) if tolerance > 0 else gt_edges
    near_pred = binary_dilation(pred_edges, structure) if tolerance > 0 else pred_edges
    precision = float((pred_edges & near_gt).sum() / max(pred_edges.sum(), 1))
    recall = float((gt_edges & near_pred).sum() / max(gt_edges.sum(), 1))
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {'precision': precision, 'recall': recall, 'f1': f1}


@METRICS.register_module()
class ControlFidelityMetric(BaseMetric):
    """Edge-map F1 between each sample's control edges and the Canny edges of its generated image (``pred_img``),
    and of the uncontrolled ``base_img`` where present (``base_*`` keys): the control fidelity proxy.

    Args:
        tolerance: Matching tolerance in pixels.
        canny_sigma: Canny sigma for the generated images (that of the dataset's control maps).
    """
    default_prefix = 'diffusion'

    def __init__(self, tolerance: int = 1, canny_sigma: float = 1.0, collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        edge_f1(np.zeros((1, 1), bool), np.zeros((1, 1), bool), tolerance)  # checks the tolerance now, not later
        self.tolerance, self.canny_sigma = tolerance, canny_sigma

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            sample = sample.to_dict() if hasattr(sample, 'to_dict') else sample
            if sample.get('control') is None:
                raise KeyError('ControlFidelityMetric needs the control map in each data sample')
            control = as_numpy(sample['control'])
            control = control.reshape(control.shape[-2:]) > 0
            result = {}
            for key, prefix in (('pred_img', ''), ('base_img', 'base_')):
                if sample.get(key) is None:
                    continue
                image = _uint8_image(sample, key)
                if image.ndim != 3 or image.shape[0] not in (1, 3):
                    raise ValueError(f'{key} must be an image [3 or 1, H, W], got {image.shape}')
                image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # grey models too
                scores = edge_f1(canny_edges(image, self.canny_sigma), control, self.tolerance)
                result.update({prefix + k: v for k, v in scores.items()})
            self.results.append(result)

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        keys = sorted({k for r in results for k in r})
        renamed = {'f1': 'control_f1', 'precision': 'control_precision', 'recall': 'control_recall',
                   'base_f1': 'base_control_f1', 'base_precision': 'base_control_precision',
                   'base_recall': 'base_control_recall'}
        return {renamed[k]: float(np.mean([r[k] for r in results if k in r])) for k in keys}


@METRICS.register_module()
class SampleQualityMetric(BaseMetric):
    """Reconstruction-style quality proxy: PSNR (dB, at most :data:`PSNR_MAX_DB`, which identical images score) and
    SSIM of ``pred_img`` (and ``base_img``) against the real image ``gt_img`` of the same condition.

    SSIM uses skimage's 7x7 uniform window; images with a side under 7 pixels use the largest odd window that fits
    (3 or 5, with a warning: such values do not compare with 7x7 ones), and sides under 3 pixels are refused (a 1x1
    window has no variance to compare).
    """
    default_prefix = 'diffusion'

    def process(self, data_batch, data_samples: Sequence) -> None:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity
        for sample in data_samples:
            sample = sample.to_dict() if hasattr(sample, 'to_dict') else sample
            real = _uint8_image(sample, 'gt_img')
            if real.ndim != 3:  # SSIM needs the channel axis; without it the value was dropped
                raise ValueError(f'gt_img must be an image [C, H, W], got {real.shape}')
            height, width = real.shape[-2:]
            side = min(height, width)
            win_size = min(SSIM_WIN_SIZE, side if side % 2 else side - 1)  # skimage takes odd windows only
            if win_size < 3:
                raise ValueError(f'SSIM needs images of at least 3x3 pixels (its smallest window), got '
                                 f'{height}x{width}')
            if win_size < SSIM_WIN_SIZE:
                warnings.warn(f'SampleQualityMetric: {height}x{width} images are smaller than the '
                              f'{SSIM_WIN_SIZE}-pixel SSIM window; their SSIM uses a {win_size}-pixel window (not '
                              f'comparable with {SSIM_WIN_SIZE}-pixel values)', stacklevel=2)
            result = {}
            for key, prefix in (('pred_img', ''), ('base_img', 'base_')):
                if sample.get(key) is None:
                    continue
                fake = _uint8_image(sample, key)
                if fake.shape != real.shape:
                    raise ValueError(f'{key} {fake.shape} and gt_img {real.shape} differ in shape')
                # identical images: skimage would divide by a zero MSE (inf, and a RuntimeWarning)
                psnr = PSNR_MAX_DB if np.array_equal(real, fake) else peak_signal_noise_ratio(real, fake,
                                                                                             data_range=255)
                result[prefix + 'psnr'] = min(float(psnr), PSNR_MAX_DB)
                result[prefix + 'ssim'] = float(structural_similarity(real, fake, channel_axis=0, data_range=255,
                                                                      win_size=win_size))
            self.results.append(result)

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        keys = sorted({k for r in results for k in r})
        return {k: float(np.mean([r[k] for r in results if k in r])) for k in keys}

