"""The semantic segmentation metric: mIoU, mAcc and aAcc from a confusion matrix summed over the dataset, as
mmsegmentation's IoUMetric reports them, and the class count that the segmentation metrics share."""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from visionattn.engine.registry import METRICS

from .data import IGNORE_INDEX

__all__ = ['IoUMetric', 'metric_num_classes', 'paired_label_maps']


def metric_num_classes(metric: BaseMetric, sample: Dict) -> int:
    """A segmentation metric's class count: its ``num_classes``, else the dataset's classes, else the logits'."""
    if metric.num_classes is not None:
        return metric.num_classes
    classes = (metric.dataset_meta or {}).get('classes')
    if classes:
        return len(classes)
    if 'seg_logits' in sample:
        return int(sample['seg_logits'].shape[0])
    raise ValueError(f'{type(metric).__name__} needs num_classes, a dataset with classes, or seg_logits in the '
                     'predictions')


def paired_label_maps(pred, gt, where: str) -> Tuple:
    """A prediction and its ground truth (tensors or arrays) as two [H, W] label maps of one shape, leading singleton
    dims dropped. The shapes are compared before anything is reshaped: a 32x128 prediction reshaped to a 64x64 ground
    truth would be scored pixel against the wrong pixel."""
    shapes = tuple(pred.shape), tuple(gt.shape)
    while pred.ndim > 2 and pred.shape[0] == 1:
        pred = pred[0]
    while gt.ndim > 2 and gt.shape[0] == 1:
        gt = gt[0]
    if pred.ndim != 2 or tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f'{where}: prediction {shapes[0]} and ground truth {shapes[1]} differ (expected two label '
                         'maps [H, W] of one size)')
    return pred, gt


@METRICS.register_module()
class IoUMetric(BaseMetric):
    """mIoU, mAcc and aAcc (%), and per-class IoU, from a confusion matrix summed over the dataset (exact).

    Each batch adds a ``num_classes x num_classes`` count matrix (``torch.bincount`` of true x predicted) over the
    pixels whose label is not ``ignore_index``. IoU = TP / (TP + FP + FN) per class; mIoU and mAcc average over the
    classes that occur in the ground truth or the predictions (mmseg's nanmean); aAcc = correct / labelled pixels.
    Keys: 'mIoU', 'mAcc', 'aAcc', and with ``classwise`` 'IoU.<class name>' per class (names from the dataset's
    ``classes``, else the index). A per-class table goes to the log either way.

    Args:
        num_classes: Classes; default the dataset's ``classes`` count, else the predictions' logit channels.
        ignore_index: Label that is not evaluated.
        classwise: Return the per-class IoU too.
    """
    default_prefix = ''

    def __init__(self, num_classes: Optional[int] = None, ignore_index: int = IGNORE_INDEX, classwise: bool = True,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_classes is not None and num_classes < 1:
            raise ValueError(f'num_classes must be positive (or None for the dataset\'s), got {num_classes}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.classwise = classwise

    def _classes(self, sample: Dict) -> int:
        return metric_num_classes(self, sample)

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        confusion = None
        for sample in data_samples:
            k = self._classes(sample)
            pred, gt = sample['pred_sem_seg'], sample['gt_sem_seg']
            pred, gt = paired_label_maps(pred['data'] if isinstance(pred, dict) else pred,
                                         gt['data'] if isinstance(gt, dict) else gt,
                                         f"sample {sample.get('metainfo', sample).get('index', '?')}")
            pred, gt = pred.reshape(-1).long().cpu(), gt.reshape(-1).long().cpu()
            valid = gt != self.ignore_index
            if bool(((gt[valid] < 0) | (gt[valid] >= k)).any()):
                raise ValueError(f'gt_sem_seg holds labels outside 0..{k - 1} besides ignore_index '
                                 f'{self.ignore_index}: {sorted(set(gt[valid].tolist()) - set(range(k)))[:10]}')
            pred = pred[valid]
            if bool(((pred < 0) | (pred >= k)).any()):  # clamped, class 7 of 8 would count as class 2 of 3
                raise ValueError(f'pred_sem_seg holds labels outside 0..{k - 1}: '
                                 f'{sorted(set(pred.tolist()) - set(range(k)))[:10]} (the metric counts {k} classes: '
                                 'set its num_classes, or the dataset\'s classes, to the model\'s)')
            counts = torch.bincount(gt[valid] * k + pred, minlength=k * k).view(k, k)
            confusion = counts if confusion is None else confusion + counts
        if confusion is not None:
            self.results.append(confusion)

    def compute_metrics(self, results: List[torch.Tensor]) -> Dict[str, float]:
        if not results:
            raise ValueError('IoUMetric got no predictions: process() saw no samples')
        confusion = torch.stack(results).sum(0).double()
        true_positive = confusion.diag()
        labelled = confusion.sum(1)
        union = labelled + confusion.sum(0) - true_positive
        iou = true_positive / union  # NaN for classes absent from both ground truth and predictions
        acc = true_positive / labelled
        metrics = {'aAcc': 100.0 * (true_positive.sum() / labelled.sum().clamp(min=1)).item(),
                   'mIoU': 100.0 * float(np.nanmean(iou.numpy())) if union.gt(0).any() else float('nan'),
                   'mAcc': 100.0 * float(np.nanmean(acc.numpy())) if labelled.gt(0).any() else float('nan')}
        names = list((self.dataset_meta or {}).get('classes') or [])
        names = [str(names[i]) if i < len(names) else str(i) for i in range(len(iou))]
        rows = '\n'.join(f'{n:>20} {100 * a:8.2f} {100 * b:8.2f}' for n, a, b in zip(names, iou.tolist(),
                                                                                  acc.tolist()))
        print_log(f'per-class results:\n{"class":>20} {"IoU":>8} {"Acc":>8}\n{rows}', logger='current')
        if self.classwise:
            metrics.update({f'IoU.{n}': 100.0 * v for n, v in zip(names, iou.tolist())})
        return metrics
