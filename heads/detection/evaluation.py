"""COCO box AP for the detection task: :class:`CocoMetric` (pycocotools' COCOeval under mmdet's metric keys)."""
import contextlib
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement

from visionattn.engine.registry import METRICS

__all__ = ['CocoMetric', 'COCO_METRIC_KEYS']

# COCOeval's first six statistics, under mmdet's names (with the metric's 'coco' prefix: 'coco/bbox_mAP', ...).
COCO_METRIC_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')


def _tensor(value) -> np.ndarray:
    if isinstance(value, dict):  # InstanceData fields after BaseDataElement.to_dict()
        value = value['data'] if 'data' in value else value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _field(sample: Dict, name: str) -> Dict:
    value = sample.get(name)
    if value is None:
        return {}
    if isinstance(value, BaseDataElement):
        return value.to_dict()
    return dict(value)


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO box AP with pycocotools' COCOeval: 'coco/bbox_mAP' (AP at IoU .50:.95), 'coco/bbox_mAP_50',
    'coco/bbox_mAP_75', 'coco/bbox_mAP_s', 'coco/bbox_mAP_m', 'coco/bbox_mAP_l' (0..1, mmdet's keys).

    The ground truth is the annotation file (``ann_file``, else the dataset's, from its metainfo) restricted to
    the images evaluated, or, with ``use_ann_file=False`` or no file, the original annotations the samples carry
    (``instances`` in the metainfo, crowd boxes flagged). Predicted labels are mapped back to category ids with
    the dataset's ``cat_ids``.

    Args:
        ann_file: COCO annotation JSON; default the dataset's.
        use_ann_file: Evaluate against the annotation file when one is known.
        classwise: Also report the AP of each class ('coco/<name>_precision').
        proposal_nums: COCOeval's maxDets, three increasing counts (its summary reads three); every AP key is
            taken at the last (pycocotools' own summary takes 'bbox_mAP' at 100 whatever they are: -1 without a
            100). The default (1, 10, 100) gives pycocotools' numbers.
        outfile_prefix: Write the detections in COCO's results format to ``<prefix>.bbox.json``.
        format_only: Only write the results file, return no metrics.
        collect_device: Device results are gathered on across processes.
        prefix: Key prefix, 'coco' by default.
    """
    default_prefix = 'coco'

    def __init__(self, ann_file: Optional[str] = None, use_ann_file: bool = True, classwise: bool = False,
                 proposal_nums: Sequence[int] = (1, 10, 100), outfile_prefix: Optional[str] = None,
                 format_only: bool = False, collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if format_only and outfile_prefix is None:
            raise ValueError('format_only needs an outfile_prefix to write the results to')
        self.ann_file = ann_file
        self.use_ann_file = use_ann_file
        self.classwise = classwise
        nums = tuple(proposal_nums)
        if len(nums) != 3 or any(int(n) != n or n < 1 for n in nums) or not nums[0] < nums[1] < nums[2]:
            raise ValueError(f'proposal_nums must be three increasing positive detection counts (COCOeval\'s maxDets, '
                             f'e.g. (1, 10, 100)), got {proposal_nums}')
        self.proposal_nums = tuple(int(n) for n in nums)
        self.outfile_prefix = outfile_prefix
        self.format_only = format_only

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            pred = _field(sample, 'pred_instances')
            if not pred:
                raise ValueError('CocoMetric needs pred_instances (bboxes, scores, labels) in the predictions')
            meta = sample.get('metainfo', sample)
            img_id = meta.get('img_id', meta.get('index'))
            if img_id is None:
                raise ValueError('CocoMetric needs an img_id (or index) in each sample\'s metainfo')
            ori_h, ori_w = meta.get('ori_shape', meta.get('img_shape'))
            bboxes = _tensor(pred['bboxes']).astype(np.float64).reshape(-1, 4)
            scores = _tensor(pred['scores']).astype(np.float64).reshape(-1)
            # pycocotools scores a NaN box as a perfect match (its IoU fails the "< threshold" test) and ranks a
            # NaN score anywhere: refuse them rather than report a wrong AP
            for name, value in (('bboxes', bboxes), ('scores', scores)):
                if not np.isfinite(value).all():
                    raise ValueError(f'image {img_id}: pred_instances.{name} holds a non-finite value '
                                     f'({value[~np.isfinite(value)][0]}): the model diverged or its output is broken')
            self.results.append({
                'img_id': int(img_id), 'height': int(ori_h), 'width': int(ori_w), 'bboxes': bboxes, 'scores': scores,
                'labels': _tensor(pred['labels']).astype(np.int64).reshape(-1),
                'instances': meta.get('instances'),
            })

    def _cat_ids(self, coco_gt=None) -> List[int]:
        cat_ids = (self.dataset_meta or {}).get('cat_ids')
        if cat_ids:
            return [int(c) for c in cat_ids]
        if coco_gt is not None:
            return sorted(coco_gt.getCatIds())
        raise ValueError('CocoMetric needs the dataset\'s cat_ids (its metainfo) or an annotation file')

    def _gt_from_samples(self, results: List[Dict], cat_ids: Sequence[int]) -> Dict:
        names = list((self.dataset_meta or {}).get('classes') or [])
        images, annotations = [], []
        for result in results:
            images.append({'id': result['img_id'], 'width': result['width'], 'height': result['height']})
            if result['instances'] is None:
                raise ValueError('CocoMetric without an annotation file needs the original annotations in the '
                                 "samples ('instances' in the metainfo, as CocoDetection gives)")
            for inst in result['instances']:
                label = int(inst['bbox_label'])
                if not 0 <= label < len(cat_ids):  # a negative one would silently index from the end
                    raise ValueError(f"image {result['img_id']}: ground-truth bbox_label {label} is outside the "
                                     f'{len(cat_ids)} categories')
                x1, y1, x2, y2 = (float(v) for v in inst['bbox'])
                annotations.append({'id': len(annotations) + 1, 'image_id': result['img_id'],
                                    'category_id': int(cat_ids[label]),
                                    'bbox': [x1, y1, x2 - x1, y2 - y1],
                                    'area': float(inst.get('area', (x2 - x1) * (y2 - y1))),
                                    'iscrowd': int(inst.get('ignore_flag', 0))})
        categories = [{'id': int(c), 'name': names[i] if i < len(names) else str(c)} for i, c in enumerate(cat_ids)]
        return {'images': images, 'annotations': annotations, 'categories': categories}

    @staticmethod
    def _detections(results: List[Dict], cat_ids: Sequence[int]) -> List[Dict]:
        detections = []
        for result in results:
            for box, score, label in zip(result['bboxes'], result['scores'], result['labels']):
                if not 0 <= label < len(cat_ids):
                    raise ValueError(f'predicted label {label} is outside the {len(cat_ids)} categories')
                x1, y1, x2, y2 = (float(v) for v in box)
                detections.append({'image_id': result['img_id'], 'category_id': int(cat_ids[label]),
                                   'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': float(score)})
        return detections

    @staticmethod
    def _average_precisions(evaluator) -> List[float]:
        """COCOeval's six AP statistics (its ``summarize`` rule: the mean of the defined precisions, -1 if none),
        all at the last maxDets."""
        precision = evaluator.eval['precision']  # [iou, recall, class, area, max dets]
        areas = list(evaluator.params.areaRngLbl)
        ious = np.asarray(evaluator.params.iouThrs)
        picks = [(None, 'all'), (0.5, 'all'), (0.75, 'all'), (None, 'small'), (None, 'medium'), (None, 'large')]
        stats = []
        for iou, area in picks:
            values = precision[:, :, :, areas.index(area), -1]
            if iou is not None:
                values = values[np.isclose(ious, iou)]
            values = values[values > -1]
            stats.append(float(values.mean()) if values.size else -1.0)
        return stats

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        ann_file = self.ann_file or (self.dataset_meta or {}).get('ann_file')
        quiet = io.StringIO()
        if self.use_ann_file and ann_file:
            with contextlib.redirect_stdout(quiet):
                coco_gt = COCO(str(ann_file))
            cat_ids = self._cat_ids(coco_gt)
        else:
            cat_ids = self._cat_ids()
            coco_gt = COCO()
            coco_gt.dataset = self._gt_from_samples(results, cat_ids)
            with contextlib.redirect_stdout(quiet):
                coco_gt.createIndex()
        img_ids = sorted({r['img_id'] for r in results})
        missing = [i for i in img_ids if i not in coco_gt.imgs]
        if missing:
            raise ValueError(f'{len(missing)} evaluated images are not in the ground truth, e.g. ids {missing[:5]}')
        detections = self._detections(results, cat_ids)
        if self.outfile_prefix is not None:
            out = Path(f'{self.outfile_prefix}.bbox.json')
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(detections))
            print_log(f'detections written to {out}', logger='current')
        if self.format_only:
            return {}
        if not detections:
            print_log('CocoMetric: no detections at all, every AP is 0', logger='current', level=30)
            return {key: 0.0 for key in COCO_METRIC_KEYS}
        with contextlib.redirect_stdout(quiet):
            coco_dt = coco_gt.loadRes(detections)
            evaluator = COCOeval(coco_gt, coco_dt, 'bbox')
            evaluator.params.imgIds = img_ids
            evaluator.params.catIds = list(cat_ids)
            evaluator.params.maxDets = list(self.proposal_nums)
            evaluator.evaluate()
            evaluator.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
        print_log('\n' + summary.getvalue(), logger='current')
        metrics = dict(zip(COCO_METRIC_KEYS, self._average_precisions(evaluator)))
        if self.proposal_nums[-1] != 100:
            print_log(f'the AP keys are at maxDets={self.proposal_nums[-1]} (the summary\'s first line is at 100): '
                      f'bbox_mAP = {metrics["bbox_mAP"]:.3f}', logger='current')
        if self.classwise:
            names = list((self.dataset_meta or {}).get('classes') or [])
            precision = evaluator.eval['precision']  # [iou, recall, class, area, max dets]
            for k, cat in enumerate(cat_ids):
                values = precision[:, :, k, 0, -1]
                values = values[values > -1]
                name = names[k] if k < len(names) else str(cat)
                metrics[f'{name}_precision'] = float(values.mean()) if values.size else float('nan')
        return metrics
