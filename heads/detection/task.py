"""Object detection as an mmengine model: collate, data preprocessor, the Detector task model and the
``--show-dir`` box-drawing hook; the detection datasets are registered here.

Networks are plain modules (e.g. :class:`~visionattn.heads.detection.focus_detr.FocusDETR`) with ``loss(images,
pad_mask, targets)`` and ``predict(images, pad_mask, image_sizes)``; targets hold labels and cxcywh boxes normalised
by each image's unpadded size. The Detector converts the data samples' boxes (x1y1x2y2 in input pixels) to that form
and maps predictions back to the original images. COCO box AP is in :mod:`.evaluation`.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.structures import BaseDataElement, InstanceData

from visionattn.engine.base import NormalizePadPreprocessor, TaskModel, batch_canvas, pad_to, parse_total_loss
from visionattn.engine.hooks import ShowDirHook
from visionattn.engine.registry import DATASETS, FUNCTIONS, HOOKS, MODELS, TASK_UTILS
from visionattn.layers import ChannelMapper

from .criterion import FocusDETRCriterion
from .data import CocoDetection, SyntheticCocoDetection
from .focus_detr import FocusDETR, FocusDETRDecoder, FocusDETREncoder
from .matcher import HungarianMatcher

__all__ = ['det_collate', 'DetDataPreprocessor', 'Detector', 'DetPredictionImagesHook', 'make_pad_mask',
           'check_gt_boxes']

DATASETS.register_module(module=CocoDetection)
DATASETS.register_module(module=SyntheticCocoDetection)
# Focus-DETR and its parts, for configs that name them by string (``type='FocusDETREncoder'``)
for _part in (FocusDETR, FocusDETREncoder, FocusDETRDecoder, FocusDETRCriterion, ChannelMapper):
    MODELS.register_module(module=_part)
TASK_UTILS.register_module(module=HungarianMatcher)


@FUNCTIONS.register_module()
def det_collate(batch: Sequence[Dict]) -> Dict:
    """Pad a batch of detection items to the largest image (bottom/right, 0) and make one data sample per item.

    Items are ``{'img': uint8 [C, H, W], 'gt_bboxes': [n, 4] x1y1x2y2 pixels, 'gt_labels': [n], 'meta': dict}``
    (:class:`~visionattn.heads.detection.data.CocoDetection`). Each sample holds ``gt_instances`` (InstanceData with
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


def check_gt_boxes(boxes: torch.Tensor, size: Tuple[int, int], index: int) -> torch.Tensor:
    """Image ``index``'s gt boxes [n, 4] (x1y1x2y2 pixels) clipped to its (h, w), refusing boxes no data set means.

    A box reaching past the border is clipped, as this package's pipelines do (``CocoDetection`` and the
    albumentations ``BboxParams(clip=True)``, like DETR's ``ConvertCocoPolysToMask``): it is a real object cut by the
    frame. Errors are a non-finite coordinate (the matcher fails on it), x2 < x1 or y2 < y1 (the GIoU loss of an
    inverted box is unbounded below: training diverges without a NaN) and a box with no point in [0, w] x [0, h]
    (nothing of it is visible: wrong coordinates or a box of another image). Zero-width or zero-height boxes are kept.
    """
    h, w = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    rules = ((~torch.isfinite(boxes).all(-1), 'has a non-finite coordinate'),  # first: NaN fails every comparison
             ((x2 < x1) | (y2 < y1), 'is inverted (x2 < x1 or y2 < y1)'),
             ((x2 < 0) | (y2 < 0) | (x1 > w) | (y1 > h), f'lies wholly outside the image of (h, w) = {(h, w)}'))
    for bad, why in rules:
        if bad.any():
            j = int(bad.nonzero()[0])
            raise ValueError(f'image {index}: gt box {j} = {boxes[j].tolist()} (x1, y1, x2, y2 pixels) {why}')
    return torch.minimum(boxes.clamp(min=0), boxes.new_tensor([w, h, w, h]))


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

    show_hook = DetPredictionImagesHook

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

    def mode_kwargs(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]],
                    pad_mask: Optional[torch.Tensor] = None) -> Dict:
        """Every mode takes ``pad_mask`` [B, H, W] (True on padding): forward's own, or made from the samples'
        metainfo. Data samples, when given, must be one per image."""
        if inputs.ndim != 4:
            raise ValueError(f'Detector expects inputs [B, 3, H, W], got {tuple(inputs.shape)}')
        if data_samples is not None and len(data_samples) != inputs.shape[0]:
            raise ValueError(f'{len(data_samples)} data samples for {inputs.shape[0]} images: give one per image')
        if pad_mask is None:
            pad_mask = make_pad_mask(data_samples, inputs.shape[0], *inputs.shape[-2:], device=inputs.device)
        return {'pad_mask': pad_mask}

    def _forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]],
                 pad_mask: torch.Tensor) -> Dict:
        return self.network(inputs, pad_mask)

    @staticmethod
    def _image_size(sample: BaseDataElement, inputs: torch.Tensor) -> Tuple[int, int]:
        h, w = sample.metainfo.get('img_shape', inputs.shape[-2:])
        return int(h), int(w)

    def targets(self, inputs: torch.Tensor, data_samples: Sequence[BaseDataElement]) -> List[Dict]:
        """The network's targets: labels and cxcywh boxes normalised by each image's size before padding (boxes
        checked and clipped to the image by :func:`check_gt_boxes`)."""
        if not data_samples or any(s.get('gt_instances') is None for s in data_samples):
            raise ValueError("mode='loss' needs gt_instances (bboxes, labels) in every data sample")
        num_classes = self.num_classes
        targets = []
        for i, sample in enumerate(data_samples):
            gt = sample.gt_instances
            boxes = gt.bboxes.to(inputs.device, torch.float32).reshape(-1, 4)
            labels = gt.labels.to(inputs.device, torch.long).reshape(-1)
            if num_classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(f'gt labels {sorted(set(labels.tolist()))} are outside 0..{num_classes - 1}: set '
                                 'the network\'s num_classes to the dataset\'s class count')
            size = self._image_size(sample, inputs)
            targets.append({'labels': labels,
                            'boxes': xyxy_to_cxcywh_normalised(check_gt_boxes(boxes, size, i), size)})
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
        sample: the network's boxes in input pixels divided by 'scale_factor' and clipped to 'ori_shape' (default:
        the sample's 'img_shape' divided by its 'scale_factor')."""
        if data_samples is None:
            data_samples = [BaseDataElement(metainfo={'img_shape': tuple(inputs.shape[-2:])})
                            for _ in range(len(inputs))]
        sizes = [self._image_size(s, inputs) for s in data_samples]
        results = self.network.predict(inputs, pad_mask, sizes)
        for sample, result, (h, w) in zip(data_samples, results, sizes):
            boxes = result['boxes'].detach().float().reshape(-1, 4)
            scale_w, scale_h = sample.metainfo.get('scale_factor', (1.0, 1.0))
            boxes = boxes / boxes.new_tensor([scale_w, scale_h, scale_w, scale_h])
            # without 'ori_shape': this image's own input size mapped back by its scale (never another image's)
            ori_h, ori_w = sample.metainfo.get('ori_shape', (round(h / scale_h), round(w / scale_w)))
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ori_w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ori_h)
            sample.pred_instances = InstanceData(bboxes=boxes, scores=result['scores'].detach().float().reshape(-1),
                                                 labels=result['labels'].detach().long().reshape(-1))
        return data_samples

    def parse_losses(self, losses: Dict[str, torch.Tensor]):
        """Back-propagates ``losses['loss']`` only; see :func:`parse_total_loss`."""
        return parse_total_loss(losses)
