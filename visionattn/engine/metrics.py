"""Classification metrics for mmengine's evaluator."""
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import BaseMetric

from .registry import METRICS

__all__ = ['Accuracy']


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy (%) of ``pred_score`` against ``gt_label``, reported as 'accuracy/top1', 'accuracy/top5'.

    Args:
        topk: The k values; a k above the number of classes is reported as 100 by definition.
    """
    default_prefix = 'accuracy'

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if not topk or any(k < 1 for k in topk):
            raise ValueError(f'topk must be positive integers, got {topk}')
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            score, label = sample['pred_score'], sample['gt_label']
            top = score.topk(min(max(self.topk), score.numel())).indices
            self.results.append({'hits': [bool((top[:k] == label).any()) for k in self.topk]})

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        hits = torch.tensor([r['hits'] for r in results], dtype=torch.float64)
        return {f'top{k}': 100.0 * hits[:, i].mean().item() for i, k in enumerate(self.topk)}
