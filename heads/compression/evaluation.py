"""The rate-distortion metric of learned image compression: bpp from real bitstreams, PSNR, MS-SSIM and coding
times of :class:`~visionattn.heads.compression.task.ImageCompressor` predictions, optionally beside baselines."""
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric

from visionattn.engine.registry import METRICS

from .baselines import baseline_rd_points
from .measures import ms_ssim_value, psnr
from .rate_distortion import plot_rd_curves, psnr_at_rate

__all__ = ['RateDistortionMetric']


@METRICS.register_module()
class RateDistortionMetric(BaseMetric):
    """Mean bpp (real bitstreams), PSNR, MS-SSIM, estimated bpp and encode/decode ms of :class:`ImageCompressor`
    predictions; optionally the classical codecs on the same images and the PSNR of JPEG at the model's bpp.

    Args:
        baselines: Codecs to run on the evaluated images: Pillow's ('JPEG', 'WEBP', 'AVIF') and CompressAI's zoo
            models as 'compressai:<architecture>' (e.g. 'compressai:cheng2020-anchor', released weights downloaded
            once); empty: none.
        qualities: The Pillow codecs' quality settings.
        learned_qualities: The CompressAI models' quality indices.
        plot_path: Write the RD plot (model point and baselines) here when set.
        results_path: Write the metrics and the baseline curves as JSON here when set (tools/rd_compare.py reads
            one such file per quality level and computes BD-rates).
    """
    default_prefix = 'rd'

    def __init__(self, baselines: Sequence[str] = (), qualities: Sequence[int] = (5, 10, 20, 30, 50, 75, 90),
                 learned_qualities: Sequence[int] = (1, 2, 3, 4, 5, 6), plot_path: Optional[str] = None,
                 results_path: Optional[str] = None, collect_device: str = 'cpu',
                 prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.baselines, self.qualities, self.plot_path = tuple(baselines), tuple(qualities), plot_path
        self.results_path, self.learned_qualities = results_path, tuple(learned_qualities)
        self.baseline_points: Dict[str, List[Dict]] = {}

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            missing = [k for k in ('pred_img', 'gt_img', 'bpp') if k not in sample]
            if missing:
                raise KeyError(f'RateDistortionMetric needs ImageCompressor predictions; missing {missing}')
            reference, decoded = sample['gt_img'].cpu(), sample['pred_img'].cpu()
            self.results.append({
                'bpp': float(sample['bpp']), 'bpp_estimated': float(sample.get('bpp_estimated', float('nan'))),
                'psnr': psnr(reference, decoded), 'ms_ssim': ms_ssim_value(reference, decoded),
                'encode_ms': float(sample.get('encode_ms', float('nan'))),
                'decode_ms': float(sample.get('decode_ms', float('nan'))),
                'gt_img': reference if self.baselines else None})

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        keys = ('bpp', 'bpp_estimated', 'psnr', 'ms_ssim', 'encode_ms', 'decode_ms')
        metrics = {k: float(np.mean([r[k] for r in results])) for k in keys}
        metrics['ms_ssim_db'] = -10 * math.log10(max(1 - metrics['ms_ssim'], 1e-10))
        images = [r['gt_img'] for r in results if r['gt_img'] is not None]
        self.baseline_points = {name.lower(): baseline_rd_points(images, name, self.qualities, self.learned_qualities)
                                for name in self.baselines}
        for fmt, points in self.baseline_points.items():
            metrics[f'{fmt}_psnr_at_bpp'] = psnr_at_rate(points, metrics['bpp'])
            metrics[f'psnr_gain_vs_{fmt}'] = metrics['psnr'] - metrics[f'{fmt}_psnr_at_bpp']
        if self.plot_path:
            curves = {'model': [{'bpp': metrics['bpp'], 'psnr': metrics['psnr']}], **self.baseline_points}
            plot_rd_curves(curves, self.plot_path)
        if self.results_path:
            path = Path(self.results_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({'model': metrics, **self.baseline_points}, indent=2))
        return metrics
