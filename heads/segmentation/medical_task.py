"""Medical segmentation glue: ParaTransCNN, its losses and the slice datasets in the registries, a Segmentor that
predicts as the official test does, and the per-volume Dice/HD95 metric of the official evaluation.

Official evaluation (https://github.com/HongkunSun/ParaTransCNN, utils.py ``test_single_volume_*`` and
``calculate_metric_percase``, test.py ``inference_*``): each test volume is predicted slice by slice (argmax at the
network's input size, then a nearest-neighbour zoom back to the slice's size), then for each foreground class the
whole 3-D prediction is scored against the label with medpy's ``dc`` and ``hd95``; the per-class values are averaged
over volumes, and the mean Dice / HD95 over classes are the reported numbers.
"""
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from scipy import ndimage

from visionattn.engine.registry import DATASETS, METRICS, MODELS

from .evaluation import metric_num_classes, paired_label_maps
from .losses import CEDiceLoss, DiceLoss
from .medical_data import AVTDataset, SynapseDataset, SyntheticSlicesDataset
from .paratranscnn import ParaTransCNN
from .task import Segmentor

__all__ = ['MedicalSegmentor', 'DiceHD95Metric', 'dice_coefficient', 'hd95', 'metric_percase']

MODELS.register_module(module=ParaTransCNN)
MODELS.register_module(module=DiceLoss)
MODELS.register_module(module=CEDiceLoss)
DATASETS.register_module(module=SynapseDataset)
DATASETS.register_module(module=AVTDataset)
DATASETS.register_module(module=SyntheticSlicesDataset)

Spacing = Union[None, float, Sequence[float]]


def dice_coefficient(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice 2|P and G| / (|P| + |G|) of two binary masks (medpy's ``metric.binary.dc``; 0 when both are empty)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    total = int(pred.sum()) + int(gt.sum())
    return 2.0 * float(np.logical_and(pred, gt).sum()) / total if total else 0.0


def _border(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """The mask's surface voxels: the mask minus its erosion (voxels on the array's edge count as surface)."""
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(source: np.ndarray, target: np.ndarray, voxel_spacing: Spacing = None,
                      connectivity: int = 1) -> np.ndarray:
    """Distances from each surface voxel of ``source`` to the nearest surface voxel of ``target`` (medpy's
    ``__surface_distances``), with an exact Euclidean distance transform (scipy) in physical units.

    Args:
        source: Non-empty binary mask.
        target: Non-empty binary mask of the same shape.
        voxel_spacing: Size of a voxel along each axis (a scalar for all axes); None for 1.
        connectivity: Neighbourhood of the erosion that finds the surface (1: faces only).
    """
    source, target = np.atleast_1d(np.asarray(source, dtype=bool)), np.atleast_1d(np.asarray(target, dtype=bool))
    if source.shape != target.shape:
        raise ValueError(f'masks of different shapes: {source.shape} and {target.shape}')
    if not source.any() or not target.any():
        raise ValueError('surface distances need two non-empty masks')
    source_border, target_border = _border(source, connectivity), _border(target, connectivity)
    # The distance transform only needs the box holding both surfaces: distances inside it are the same as on the
    # whole array (every zero of ~target_border lies in the box), and the box is usually far smaller.
    either = source_border | target_border
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(either))
    sampling = None if voxel_spacing is None else np.broadcast_to(np.asarray(voxel_spacing, dtype=np.float64),
                                                                  (source.ndim,))
    distance = ndimage.distance_transform_edt(~target_border[box], sampling=sampling)
    return distance[source_border[box]]


def hd95(pred: np.ndarray, gt: np.ndarray, voxel_spacing: Spacing = None, connectivity: int = 1) -> float:
    """95th percentile of the symmetric surface distances (medpy's ``metric.binary.hd95``): both directed distance
    sets pooled, numpy's linear-interpolated percentile. Both masks must be non-empty."""
    both = np.hstack((surface_distances(pred, gt, voxel_spacing, connectivity),
                      surface_distances(gt, pred, voxel_spacing, connectivity)))
    return float(np.percentile(both, 95))


def metric_percase(pred: np.ndarray, gt: np.ndarray, voxel_spacing: Spacing = None) -> Tuple[float, float]:
    """(Dice, HD95) of one class in one volume, with the official ``calculate_metric_percase`` rules: both masks
    non-empty gives medpy's dc and hd95; a prediction without ground truth gives (1, 0); an empty prediction gives
    (0, 0), **also when the ground truth is empty too** (the official code's quirk, kept so that numbers compare)."""
    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    if pred.any() and gt.any():
        return dice_coefficient(pred, gt), hd95(pred, gt, voxel_spacing)
    if pred.any():
        return 1.0, 0.0
    return 0.0, 0.0


def _official_zoom_labels(labels: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map as the official test: ``scipy.ndimage.zoom(order=0)``."""
    factors = (shape[0] / labels.shape[0], shape[1] / labels.shape[1])
    out = ndimage.zoom(labels, factors, order=0)
    if out.shape != tuple(shape):  # zoom rounds the output size; it matches for the official sizes
        raise ValueError(f'zoom of {labels.shape} by {factors} gave {out.shape}, not {shape}')
    return out


@MODELS.register_module()
class MedicalSegmentor(Segmentor):
    """:class:`Segmentor` whose predictions follow the official medical test: the argmax is taken at the network's
    input size and the label map is zoomed (nearest, ``scipy.ndimage.zoom(order=0)``) to the ground truth's size
    when that differs (slices resized for the network, scored at their own size). ``seg_logits`` stay at the input
    size in that case. Arguments as :class:`Segmentor`."""

    def predict_at(self, logits: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        pred = logits.argmax(dim=0).cpu().numpy().astype(np.uint8)
        zoomed = torch.from_numpy(_official_zoom_labels(pred, size).astype(np.int64)).to(logits.device)
        return logits, zoomed


def _as_array(value) -> np.ndarray:
    if isinstance(value, dict):  # mmengine hands data elements over as dicts
        value = value['data']
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


@METRICS.register_module()
class DiceHD95Metric(BaseMetric):
    """Per-volume Dice (%) and HD95 per foreground class, as the official ParaTransCNN/TransUNet test.

    Slices are gathered into volumes by ``case_name`` (ordered by ``slice_index``; a volume is scored as soon as
    its ``num_slices`` slices have arrived, so only unfinished volumes are held in memory), each foreground class is
    scored on the whole volume with :func:`metric_percase`, and the per-class values are averaged over volumes.
    Keys: 'Dice' and 'HD95' (means over the foreground classes) and 'Dice.<class>', 'HD95.<class>'. Pixels labelled
    ``ignore_index`` count as background in both prediction and ground truth.

    Args:
        num_classes: Classes, background included; default the dataset's ``classes`` count, else the logits'.
        voxel_spacing: Voxel size (slice, row, column) for HD95, or a scalar; None for 1 as the official test.
        ignore_index: Label treated as background.
    """
    default_prefix = ''

    def __init__(self, num_classes: Optional[int] = None, voxel_spacing: Spacing = None, ignore_index: int = 255,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if num_classes is not None and num_classes < 2:
            raise ValueError(f'num_classes counts the background too and must be at least 2, got {num_classes}')
        if voxel_spacing is not None:
            spacing = np.asarray(voxel_spacing, dtype=np.float64)
            if spacing.ndim > 1 or spacing.size not in (1, 3) or not (np.isfinite(spacing) & (spacing > 0)).all():
                raise ValueError(f'voxel_spacing must be one positive size or three (slice, row, column), got '
                                 f'{voxel_spacing}')
        self.num_classes = num_classes
        self.voxel_spacing = voxel_spacing
        self.ignore_index = ignore_index
        self._pending: Dict[str, Dict] = {}

    def _classes(self, sample: Dict) -> int:
        return metric_num_classes(self, sample)

    def _score(self, case: str, slices: Dict[int, Tuple[np.ndarray, np.ndarray]], num_classes: int) -> Dict:
        order = sorted(slices)
        pred = np.stack([slices[k][0] for k in order])
        gt = np.stack([slices[k][1] for k in order])
        scores = [metric_percase(pred == c, gt == c, self.voxel_spacing) for c in range(1, num_classes)]
        return {'case': case, 'num_classes': num_classes, 'dice': [s[0] for s in scores],
                'hd95': [s[1] for s in scores]}

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            meta = sample.get('metainfo', sample)
            case, k = meta.get('case_name'), meta.get('slice_index')
            if case is None or k is None:
                raise KeyError('DiceHD95Metric needs case_name and slice_index in each sample\'s meta')
            pred, gt = paired_label_maps(_as_array(sample['pred_sem_seg']), _as_array(sample['gt_sem_seg']),
                                         f'{case} slice {k}')
            ignored = gt == self.ignore_index
            pred = np.where(ignored, 0, pred)
            gt = np.where(ignored, 0, gt)
            num_classes = self._classes(sample)
            if num_classes < 2:
                raise ValueError(f'DiceHD95Metric scores the foreground classes 1..K-1, but counts K={num_classes} '
                                 'classes: set num_classes (background included)')
            # a label the class loop never reaches would be left out of every score, silently
            for name, labels in (('gt_sem_seg', gt), ('pred_sem_seg', pred)):
                bad = labels[(labels < 0) | (labels >= num_classes)]
                if bad.size:
                    raise ValueError(f'{case} slice {k}: {name} holds label {bad.flat[0]} outside 0..{num_classes - 1}'
                                     f' (ignore_index {self.ignore_index} aside): set num_classes to the model\'s '
                                     'and the dataset\'s class count')
            pred, gt = pred.astype(np.int16), gt.astype(np.int16)
            entry = self._pending.setdefault(case, {'slices': {}, 'num_slices': meta.get('num_slices'),
                                                    'num_classes': num_classes})
            entry['slices'][int(k)] = (pred, gt)  # keyed by slice: a distributed sampler's repeats count once
            if entry['num_slices'] is not None and len(entry['slices']) == int(entry['num_slices']):
                self.results.append(self._score(case, entry['slices'], entry['num_classes']))
                del self._pending[case]

    def evaluate(self, size: int) -> Dict:
        # Volumes split across processes (or without num_slices) are unfinished here: hand their slices to the
        # gathering step, and compute_metrics joins them.
        for case, entry in self._pending.items():
            self.results.append({'case': case, 'fragment': entry['slices'], 'num_classes': entry['num_classes']})
        self._pending = {}
        return super().evaluate(size)

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        scored: Dict[str, Dict] = {}
        fragments: Dict[str, Dict] = defaultdict(dict)
        num_classes = {}
        for result in results:
            num_classes[result['case']] = result['num_classes']
            if 'fragment' in result:
                fragments[result['case']].update(result['fragment'])
            else:
                scored[result['case']] = result
        for case, slices in fragments.items():
            if case not in scored:
                scored[case] = self._score(case, slices, num_classes[case])
        if not scored:
            raise ValueError('DiceHD95Metric got no predictions')
        counts = {r['num_classes'] for r in scored.values()}
        if len(counts) != 1:
            raise ValueError(f'volumes were scored with different class counts: {sorted(counts)}')
        dice = np.array([scored[c]['dice'] for c in sorted(scored)], dtype=np.float64)  # [volumes, classes]
        dist = np.array([scored[c]['hd95'] for c in sorted(scored)], dtype=np.float64)
        mean_dice, mean_hd95 = dice.mean(0), dist.mean(0)
        names = list((self.dataset_meta or {}).get('classes') or [])
        names = [str(names[i]) if i < len(names) else str(i) for i in range(1, counts.pop())]
        rows = '\n'.join(f'{n:>20} {100 * d:8.2f} {h:8.2f}' for n, d, h in zip(names, mean_dice, mean_hd95))
        print_log(f'{len(scored)} volumes; per-class results:\n{"class":>20} {"Dice":>8} {"HD95":>8}\n{rows}',
                  logger='current')
        metrics = {'Dice': 100.0 * float(mean_dice.mean()), 'HD95': float(mean_hd95.mean())}
        metrics.update({f'Dice.{n}': 100.0 * float(d) for n, d in zip(names, mean_dice)})
        metrics.update({f'HD95.{n}': float(h) for n, h in zip(names, mean_hd95)})
        return metrics
