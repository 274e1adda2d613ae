"""Object detection as an mmengine model: collate, data preprocessor, the Detector task model, COCO box AP through
pycocotools and the ``--show-dir`` box-drawing hook.

Networks are plain modules (heads/detection, e.g. Focus-DETR) with ``loss(images, pad_mask, targets)`` and
``predict(images, pad_mask, image_sizes)``; targets hold labels and cxcywh boxes normalised by each image's
unpadded size. The Detector converts the data samples' boxes (x1y1x2y2 in input pixels) to that form and maps
predictions back to the original images.
"""
import contextlib
import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement, InstanceData

from .base import NormalizePadPreprocessor, TaskModel, batch_canvas, pad_to, parse_total_loss
from .hooks import ShowDirHook
from .registry import FUNCTIONS, HOOKS, METRICS, MODELS

__all__ = ['det_collate', 'DetDataPreprocessor', 'Detector', 'CocoMetric', 'DetPredictionImagesHook',
           'make_pad_mask', 'COCO_METRIC_KEYS']

# COCOeval's first six statistics, under mmdet's names (with the metric's 'coco' prefix: 'coco/bbox_mAP', ...).
COCO_METRIC_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')


@FUNCTIONS.register_module()
def det_collate(batch: Sequence[Dict]) -> Dict:
    """Pad a batch of detection items to the largest image (bottom/right, 0) and make one data sample per item.

    Items are ``{'img': uint8 [C, H, W], 'gt_bboxes': [n, 4] x1y1x2y2 pixels, 'gt_labels': [n], 'meta': dict}``
    (:class:`visionattn.data.detection.CocoDetection`). Each sample holds ``gt_instances`` (InstanceData with
    ``bboxes`` float32 and ``labels`` int64) and the meta as metainfo: 'img_shape' (the image's size before
    padding), 'ori_shape', 'scale_factor' (w, h), 'img_id', 'index', 'instances' (original annotations).
    """
    height, width = batch_canvas(batch, 'detection')
    inputs, samples = [], []
    for item in batch:
        h, w = (int(s) for s in item['img'].shape[-2:])
        inputs.append(pad_to(item['img'], height, width))
        boxes = torch.as_tensor(item.get('gt_bboxes', torch.zeros(0, 4)), dtype=torch.float32).reshape(-1, 4)
        labels = torch.as_tensor(item.get('gt_labels', torch.zeros(0)), dtype=torch.long).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f'an item has {len(boxes)} boxes and {len(labels)} labels')
        meta = dict(item.get('meta', {}))
        meta['img_shape'] = (h, w)
        meta.setdefault('ori_shape', (h, w))
        meta.setdefault('scale_factor', (1.0, 1.0))
        samples.append(BaseDataElement(gt_instances=InstanceData(bboxes=boxes, labels=labels), metainfo=meta))
    return {'inputs': torch.stack(inputs), 'data_samples': samples}


def make_pad_mask(data_samples: Optional[Sequence[BaseDataElement]], batch: int, height: int, width: int,
                  device=None) -> torch.Tensor:
    """[B, H, W] bool, True on padding: outside each sample's 'img_shape' (all False without samples)."""
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    for i, sample in enumerate(data_samples or ()):
        h, w = sample.metainfo.get('img_shape', (height, width))
        mask[i, h:, :] = True
        mask[i, :, w:] = True
    return mask


@MODELS.register_module()
class DetDataPreprocessor(NormalizePadPreprocessor):
    """Moves a batch to the device, normalises, pads to a size divisor and builds the padding mask.

    Returns ``{'inputs', 'data_samples', 'pad_mask'}``; the Detector's forward takes ``pad_mask`` [B, H, W]
    (True = padding, from each sample's 'img_shape'). Samples get 'pad_shape' and 'batch_input_shape'. Arguments as
    :class:`NormalizePadPreprocessor` (the default mean/std are ImageNet's, detectron2's pixel mean / 255); boxes
    need no padding (they are in the unpadded image's pixels).
    """

    def forward(self, data: Dict, training: bool = False) -> Dict:
        out = super().forward(data, training)
        batch, _, height, width = out['inputs'].shape
        for sample in out['data_samples'] or ():
            sample.set_metainfo({'batch_input_shape': (height, width)})
        out['pad_mask'] = make_pad_mask(out['data_samples'], batch, height, width, out['inputs'].device)
        return out


def _build(cfg: Union[Dict, nn.Module], what: str) -> nn.Module:
    if isinstance(cfg, dict):
        return MODELS.build(cfg)
    if isinstance(cfg, nn.Module):
        return cfg
    raise TypeError(f'{what} must be a config dict or an nn.Module, got {type(cfg).__name__}')


def xyxy_to_cxcywh_normalised(boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """x1y1x2y2 pixels -> (cx, cy, w, h) divided by the image's (w, h)."""
    h, w = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    out = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
    return out / out.new_tensor([w, h, w, h])


@MODELS.register_module()
class Detector(TaskModel):
    """A DETR-style detection network behind mmengine's ``forward(inputs, data_samples, mode)``.

    Args:
        network: Config dict (``type=`` a class, built with MODELS) or module with ``loss(images, pad_mask,
            targets) -> dict of weighted terms`` (their sum is the loss), ``predict(images, pad_mask,
            image_sizes) -> [{'scores', 'labels', 'boxes'}]`` (x1y1x2y2 pixels of each image's (h, w)) and
            ``forward(images, pad_mask)`` (raw outputs).
        data_preprocessor: Config of the data preprocessor; by default :class:`DetDataPreprocessor` with the
            network's pretrained mean/std where it has a ``pretrained_cfg``, else ImageNet's.
        init_cfg: mmengine initialisation config. Without one the network keeps its own initialisation (and
            pretrained backbone): ``init_weights`` does nothing.
    """

    def __init__(self, network: Union[Dict, nn.Module], data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        network = _build(network, 'network')
        for method in ('loss', 'predict'):
            if not callable(getattr(network, method, None)):
                raise TypeError(f'the detection network {type(network).__name__} has no {method}() method')
        if data_preprocessor is None:
            cfg = getattr(network, 'pretrained_cfg', None) or {}
            data_preprocessor = dict(type=DetDataPreprocessor, mean=cfg.get('mean', (0.485, 0.456, 0.406)),
                                     std=cfg.get('std', (0.229, 0.224, 0.225)))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.network = network

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.network, 'num_classes', None)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor', pad_mask: Optional[torch.Tensor] = None):
        if inputs.ndim != 4:
            raise ValueError(f'Detector expects inputs [B, 3, H, W], got {tuple(inputs.shape)}')
        if pad_mask is None:
            pad_mask = make_pad_mask(data_samples, inputs.shape[0], *inputs.shape[-2:], device=inputs.device)
        if mode == 'tensor':
            return self.network(inputs, pad_mask)
        if mode == 'loss':
            return self.loss(inputs, data_samples, pad_mask)
        if mode == 'predict':
            return self.predict(inputs, data_samples, pad_mask)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    @staticmethod
    def _image_size(sample: BaseDataElement, inputs: torch.Tensor) -> Tuple[int, int]:
        h, w = sample.metainfo.get('img_shape', inputs.shape[-2:])
        return int(h), int(w)

    def targets(self, inputs: torch.Tensor, data_samples: Sequence[BaseDataElement]) -> List[Dict]:
        """The network's targets: labels and cxcywh boxes normalised by each image's size before padding."""
        if not data_samples or any(s.get('gt_instances') is None for s in data_samples):
            raise ValueError("mode='loss' needs gt_instances (bboxes, labels) in every data sample")
        num_classes = self.num_classes
        targets = []
        for sample in data_samples:
            gt = sample.gt_instances
            boxes = gt.bboxes.to(inputs.device, torch.float32).reshape(-1, 4)
            labels = gt.labels.to(inputs.device, torch.long).reshape(-1)
            if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f'gt labels {sorted(set(labels.tolist()))} are outside 0..{num_classes - 1}: set '
                                 'the network\'s num_classes to the dataset\'s class count')
            targets.append({'labels': labels,
                            'boxes': xyxy_to_cxcywh_normalised(boxes, self._image_size(sample, inputs))})
        return targets

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement],
             pad_mask: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The network's weighted loss terms and their sum under 'loss' (the one back-propagated)."""
        terms = self.network.loss(inputs, pad_mask, self.targets(inputs, data_samples))
        if not terms:
            raise ValueError('the detection network returned no loss terms')
        terms = {k: v for k, v in terms.items() if k != 'loss'}
        return {'loss': sum(terms.values()), **terms}

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]],
                pad_mask: torch.Tensor) -> List[BaseDataElement]:
        """Sets ``pred_instances`` (bboxes x1y1x2y2 in the original image's pixels, scores, labels) on each
        sample: the network's boxes in input pixels divided by 'scale_factor' and clipped to 'ori_shape'."""
        if data_samples is None:
            data_samples = [BaseDataElement(metainfo={'img_shape': tuple(inputs.shape[-2:])})
                            for _ in range(len(inputs))]
        sizes = [self._image_size(s, inputs) for s in data_samples]
        results = self.network.predict(inputs, pad_mask, sizes)
        for sample, result in zip(data_samples, results):
            boxes = result['boxes'].detach().float().reshape(-1, 4)
            scale_w, scale_h = sample.metainfo.get('scale_factor', (1.0, 1.0))
            boxes = boxes / boxes.new_tensor([scale_w, scale_h, scale_w, scale_h])
            ori_h, ori_w = sample.metainfo.get('ori_shape', sizes[0])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ori_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ori_h)
            sample.pred_instances = InstanceData(bboxes=boxes, scores=result['scores'].detach().float().reshape(-1),
                                                 labels=result['labels'].detach().long().reshape(-1))
        return data_samples

    def parse_losses(self, losses: Dict[str, torch.Tensor]):
        """Back-propagates ``losses['loss']`` only; see :func:`parse_total_loss`."""
        return parse_total_loss(losses)


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
        proposal_nums: COCOeval's maxDets (the last one counts for AP).
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
        self.proposal_nums = tuple(int(n) for n in proposal_nums)
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
            self.results.append({
                'img_id': int(img_id), 'height': int(ori_h), 'width': int(ori_w),
                'bboxes': _tensor(pred['bboxes']).astype(np.float64).reshape(-1, 4),
                'scores': _tensor(pred['scores']).astype(np.float64).reshape(-1),
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
                x1, y1, x2, y2 = (float(v) for v in inst['bbox'])
                annotations.append({'id': len(annotations) + 1, 'image_id': result['img_id'],
                                    'category_id': int(cat_ids[int(inst['bbox_label'])]),
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
        metrics = {key: float(value) for key, value in zip(COCO_METRIC_KEYS, evaluator.stats[:6])}
        if self.classwise:
            names = list((self.dataset_meta or {}).get('classes') or [])
            precision = evaluator.eval['precision']  # [iou, recall, class, area, max dets]
            for k, cat in enumerate(cat_ids):
                values = precision[:, :, k, 0, -1]
                values = values[values > -1]
                name = names[k] if k < len(names) else str(cat)
                metrics[f'{name}_precision'] = float(values.mean()) if values.size else float('nan')
        return metrics


def _colour(label: int) -> Tuple[int, int, int]:
    rng = np.random.default_rng(label + 7)
    return tuple(int(c) for c in rng.integers(60, 256, size=3))


@HOOKS.register_module()
class DetPredictionImagesHook(ShowDirHook):
    """Saves, per test image, its predicted boxes above ``score_thr`` (class name and score beside each) next to
    its ground-truth boxes, at the original image size, to ``out_dir`` (tools/test.py --show-dir).

    Args:
        out_dir: Folder to write PNGs to.
        max_images: Stop after this many images.
        score_thr: Draw predictions scoring at least this.
    """

    def __init__(self, out_dir: str, max_images: int = 64, score_thr: float = 0.3):
        super().__init__(out_dir, max_images)
        self.score_thr = score_thr

    @staticmethod
    def _draw(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: Optional[np.ndarray],
              names: Sequence[str]) -> np.ndarray:
        from PIL import Image, ImageDraw
        canvas = Image.fromarray(image)
        draw = ImageDraw.Draw(canvas)
        for i, (box, label) in enumerate(zip(boxes, labels)):
            colour = _colour(int(label))
            x1, y1, x2, y2 = (float(v) for v in box)
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=2)
            text = names[label] if 0 <= label < len(names) else str(int(label))
            if scores is not None:
                text = f'{text} {scores[i]:.2f}'
            draw.text((x1 + 2, max(0.0, y1 - 11)), text, fill=colour)
        return np.asarray(canvas)

    def draw(self, runner, img, sample):
        from PIL import Image
        names = tuple(runner.test_dataloader.dataset.metainfo.get('classes', ()))
        h, w = sample.metainfo.get('img_shape', img.shape[-2:])
        image = img[:3, :h, :w].cpu()
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image
        image = image.permute(1, 2, 0).numpy().astype(np.uint8)
        ori_h, ori_w = sample.metainfo.get('ori_shape', (h, w))
        if (ori_h, ori_w) != (h, w):  # predictions are in the original image's pixels: show it there
            image = np.asarray(Image.fromarray(image).resize((ori_w, ori_h), Image.BILINEAR))
        pred = sample.pred_instances
        keep = (pred.scores >= self.score_thr).cpu().numpy()
        panels = [self._draw(image, pred.bboxes.cpu().numpy()[keep], pred.labels.cpu().numpy()[keep],
                             pred.scores.cpu().numpy()[keep], names)]
        instances = sample.metainfo.get('instances')
        if instances is not None:
            gt_boxes = np.asarray([i['bbox'] for i in instances], np.float32).reshape(-1, 4)
            gt_labels = np.asarray([i['bbox_label'] for i in instances], np.int64)
        elif sample.get('gt_instances') is not None:
            scale_w, scale_h = sample.metainfo.get('scale_factor', (1.0, 1.0))
            gt_boxes = sample.gt_instances.bboxes.cpu().numpy() / np.array([scale_w, scale_h] * 2)
            gt_labels = sample.gt_instances.labels.cpu().numpy()
        else:
            gt_boxes = None
        if gt_boxes is not None:
            panels.append(self._draw(image, gt_boxes, gt_labels, None, names))
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        canvas = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        return canvas, f"img-{sample.metainfo.get('img_id', sample.metainfo.get('index', self._written))}"


# tools/test.py --show-dir asks the model which hook draws its predictions.
Detector.show_hook = DetPredictionImagesHook
