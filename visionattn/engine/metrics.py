"""Classification metrics for mmengine's evaluator."""
import math
import numbers
from typing import Dict, List, Sequence, Union

import torch
from mmengine.evaluator import BaseMetric

from .registry import METRICS

__all__ = ['Accuracy']


def _topk(topk: Union[int, Sequence[int]]) -> tuple:
    values = (topk,) if isinstance(topk, numbers.Integral) else tuple(topk) if isinstance(topk, (list, tuple)) else ()
    if not values or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1 for k in values):
        raise ValueError(f'topk must be a positive whole number or a sequence of them, got {topk!r}')
    return tuple(int(k) for k in values)


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy (%) of ``pred_score`` against ``gt_label``, reported as 'accuracy/top1', 'accuracy/top5'.

    Each sample's ``pred_score`` is a 1-D vector of class scores. Its ``gt_label`` is either the class index (a
    number or a one-element tensor) or a vector of class scores as long as ``pred_score`` (a one-hot or a soft
    Mixup/CutMix target), whose class is that of its highest score (the first of equal ones), as mmpretrain's
    ``Accuracy`` takes it. A label outside 0..classes-1 fails (there is no ignore label); a sample whose scores hold
    a NaN counts as a miss.

    Args:
        topk: The k values; a k above the number of classes is reported as 100 by definition, as timm's
            ``accuracy`` does.
    """
    default_prefix = 'accuracy'

    def __init__(self, topk: Union[int, Sequence[int]] = (1, 5), collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = _topk(topk)

    @staticmethod
    def _label(label, num_classes: int) -> int:
        label = torch.as_tensor(label)
        if label.numel() == num_classes and num_classes > 1:  # one-hot or soft target
            if label.is_complex() or not torch.isfinite(label.float()).all() or (label < 0).any():
                raise ValueError(f'Accuracy: a gt_label of {num_classes} class scores (one-hot or soft target) must '
                                 f'be finite and non-negative, got {label.tolist()}')
            return int(label.float().argmax())
        if label.numel() != 1:
            raise ValueError(f'Accuracy: a gt_label must be one class index or a vector of the {num_classes} class '
                             f'scores (one-hot or soft target), got shape {tuple(label.shape)}')
        value = label.reshape(()).item()
        if isinstance(value, (bool, complex)) or not math.isfinite(value) or float(value) != int(value):
            raise ValueError(f'Accuracy: a gt_label must be a whole class index, got {value}')
        if not 0 <= int(value) < num_classes:
            raise ValueError(f'Accuracy: a gt_label is {int(value)}, but the predictions have {num_classes} classes '
                             f'(labels 0..{num_classes - 1}); there is no ignore label: leave such samples out of the '
                             'evaluation set, or check the model and dataset class counts')
        return int(value)

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            score = torch.as_tensor(sample['pred_score'])
            if score.dim() != 1 or not score.numel():
                raise ValueError(f'Accuracy: a pred_score must be a 1-D vector of class scores, one per sample, got '
                                 f'shape {tuple(score.shape)}')
            label = self._label(sample['gt_label'], score.numel())
            if torch.isnan(score).any():  # topk ranks NaN first: no prediction, a miss
                self.results.append({'hits': [False] * len(self.topk)})
                continue
            top = score.topk(min(max(self.topk), score.numel())).indices.tolist()
            rank = top.index(label) if label in top else len(top)
            self.results.append({'hits': [rank < k for k in self.topk]})

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        if not results:
            raise ValueError('Accuracy got no samples: the evaluation set is empty (check the val/test dataloader\'s '
                             'dataset, its split and max_samples)')
        hits = torch.tensor([r['hits'] for r in results], dtype=torch.float64)
        return {f'top{k}': 100.0 * hits[:, i].mean().item() for i, k in enumerate(self.topk)}
