"""Comparing rate-distortion curves: Bjontegaard deltas (BD-rate, BD-PSNR), PSNR at a rate, and the RD plot."""
import math
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from .baselines import CLASSICAL_CODECS

__all__ = ['bd_rate', 'bd_psnr', 'psnr_at_rate', 'plot_rd_curves']


def _curve(rates: Sequence[float], qualities: Sequence[float], name: str):
    rates, qualities = np.asarray(rates, dtype=np.float64), np.asarray(qualities, dtype=np.float64)
    if rates.shape != qualities.shape or rates.ndim != 1:
        raise ValueError(f'{name}: rates and qualities must be 1-D of one length, got {rates.shape}, '
                         f'{qualities.shape}')
    if len(rates) < 4:
        raise ValueError(f'{name}: Bjontegaard deltas fit a cubic and need >= 4 points, got {len(rates)}')
    if not (np.isfinite(rates).all() and (rates > 0).all() and np.isfinite(qualities).all()):  # NaN gave a NaN delta
        raise ValueError(f'{name}: rates must be finite and positive and qualities finite, got rates '
                         f'{rates.tolist()} and qualities {qualities.tolist()}')
    return np.log(rates), qualities


def _mean_gap(x_anchor, y_anchor, x_test, y_test) -> float:
    """Mean of (cubic fit of y_test on x) - (cubic fit of y_anchor on x) over the overlap of the x ranges."""
    low, high = max(x_anchor.min(), x_test.min()), min(x_anchor.max(), x_test.max())
    if high <= low:
        raise ValueError('the two rate-distortion curves do not overlap')
    integrals = []
    for xs, ys in ((x_anchor, y_anchor), (x_test, y_test)):
        antiderivative = np.polyint(np.polyfit(xs, ys, 3))
        integrals.append(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))
    return float((integrals[1] - integrals[0]) / (high - low))


def bd_rate(anchor_rates, anchor_psnrs, test_rates, test_psnrs) -> float:
    """Bjontegaard delta rate (%) of the test curve against the anchor (VCEG-M33): cubic fits of ln(rate) as a
    function of PSNR, averaged over the common PSNR range; negative means the test codec needs fewer bits."""
    log_a, q_a = _curve(anchor_rates, anchor_psnrs, 'anchor')
    log_t, q_t = _curve(test_rates, test_psnrs, 'test')
    return 100.0 * (math.exp(_mean_gap(q_a, log_a, q_t, log_t)) - 1.0)


def bd_psnr(anchor_rates, anchor_psnrs, test_rates, test_psnrs) -> float:
    """Bjontegaard delta PSNR (dB): cubic fits of PSNR as a function of ln(rate), averaged over the common range."""
    log_a, q_a = _curve(anchor_rates, anchor_psnrs, 'anchor')
    log_t, q_t = _curve(test_rates, test_psnrs, 'test')
    return _mean_gap(log_a, q_a, log_t, q_t)


def psnr_at_rate(points: Sequence[Dict], bpp: float) -> float:
    """PSNR of an RD curve (dicts with 'bpp', 'psnr') linearly interpolated at ``bpp``; NaN outside its range."""
    points = sorted(points, key=lambda p: p['bpp'])
    rates = [p['bpp'] for p in points]
    if not points or not rates[0] <= bpp <= rates[-1]:
        return float('nan')
    return float(np.interp(bpp, rates, [p['psnr'] for p in points]))


def plot_rd_curves(curves: Dict[str, Sequence[Dict]], path, title: str = '', quality: str = 'psnr') -> None:
    """Write a PNG of rate-distortion curves: ``curves`` maps a label to points with 'bpp' and ``quality``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4.5))
    for label, points in curves.items():
        points = sorted(points, key=lambda p: p['bpp'])
        classical = label.upper() in CLASSICAL_CODECS
        style = 'o-' if classical else ('*-' if len(points) > 1 else '*')
        axis.plot([p['bpp'] for p in points], [p[quality] for p in points], style, label=label,
                  markersize=6 if classical else 14)
    axis.set_xlabel('bpp (measured bitstream)')
    axis.set_ylabel({'psnr': 'PSNR (dB)', 'ms_ssim': 'MS-SSIM'}.get(quality, quality))
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
