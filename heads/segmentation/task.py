"""Semantic segmentation as an mmengine model: collate, data preprocessor, the default loss, the Segmentor task
model and the ``--show-dir`` overlay hook; the segmentation datasets are registered here. Networks are plain modules
(:mod:`.decoders`, :mod:`.paratranscnn`) mapping float images to class logits; the Segmentor adds the loss, resizing,
padding and prediction API."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.structures import BaseDataElement

from visionattn.engine.base import NormalizePadPreprocessor, TaskModel, batch_canvas, pad_to, parse_total_loss
from visionattn.engine.hooks import ShowDirHook
from visionattn.engine.registry import DATASETS, FUNCTIONS, HOOKS, MODELS

from .data import IGNORE_INDEX, ADE20KDataset, SegFolderDataset, SyntheticShapesDataset

__all__ = ['seg_collate', 'SegDataPreprocessor', 'SegCrossEntropyLoss', 'Segmentor', 'SegPredictionImagesHook',
           'AUX_LOSS_WEIGHT']

AUX_LOSS_WEIGHT = 0.4  # mmseg's UPerNet configs weigh the FCN auxiliary head's cross-entropy by 0.4

DATASETS.register_module(module=ADE20KDataset)
DATASETS.register_module(module=SegFolderDataset)
DATASETS.register_module(module=SyntheticShapesDataset)


def _check_whole_labels(gt: torch.Tensor, what: str) -> None:
    """A float mask must hold whole class indices: the cast to an integer would truncate 1.7 to 1 (NaN and infinities,
    which have no integer, are refused too)."""
    if gt.is_floating_point():
        bad = gt[~(torch.isfinite(gt) & (gt == gt.round()))]
        if bad.numel():
            raise ValueError(f'{what} holds the non-integer label {bad[0].item():g} ({gt.dtype}): a mask holds class '
                             'indices')


# Mask dtypes a loader worker may send, smallest first; each holds the collate's padding (255).
_MASK_DTYPES = (torch.uint8, torch.int16, torch.int32, torch.int64)


def _mask_dtype(masks: Sequence[torch.Tensor]) -> torch.dtype:
    """The smallest of :data:`_MASK_DTYPES` that holds every label of the batch exactly (and the padding 255)."""
    low, high = 0, IGNORE_INDEX
    for gt in masks:
        if gt.dtype != torch.uint8 and gt.numel():
            gt_min, gt_max = torch.aminmax(gt)
            low, high = min(low, int(gt_min)), max(high, int(gt_max))
    # int64 also for float labels beyond its range: cast as before, and named by the Segmentor's label check
    return next((d for d in _MASK_DTYPES if torch.iinfo(d).min <= low and high <= torch.iinfo(d).max), torch.int64)


@FUNCTIONS.register_module()
def seg_collate(batch: Sequence[Dict]) -> Dict:
    """Stack a batch of segmentation items; one data sample per item with its mask and meta.

    Items are ``{'img': uint8 [C, H, W], 'gt_seg': integer [H, W] (255 = ignore), 'meta': dict}``. Images of
    different sizes are padded at the bottom/right to the largest (0), as are masks of the image's size (255);
    ``meta['img_shape']`` records each image's size before padding, and ``meta['gt_aligned']`` whether its mask was
    of that size (padded with the image) rather than kept at another resolution for evaluation (left as it is).

    Masks come out in the smallest integer dtype that holds the batch's labels exactly (uint8, else int16, int32,
    int64) and, when all have one shape, as views of one stacked tensor: a loader worker then sends one compact
    shared-memory block instead of one int64 block per item (8 bytes a pixel). :class:`SegDataPreprocessor` widens
    them to int64 on the device.
    """
    height, width = batch_canvas(batch, 'segmentation')
    # numpy's uint16/32/64 label maps become torch dtypes with few kernels (no aminmax): widened first, as before
    masks = [gt.long() if gt.dtype in (torch.uint16, torch.uint32, torch.uint64) else gt
             for gt in (torch.as_tensor(item['gt_seg']) for item in batch)]
    for index, gt in enumerate(masks):
        _check_whole_labels(gt, f'item {index}: gt_seg')
    dtype = _mask_dtype(masks)
    inputs, metas, gts = [], [], []
    for item, gt in zip(batch, masks):
        img, gt = item['img'], gt.to(dtype)
        h, w = img.shape[-2:]
        # Recorded, not inferred later from the size: a mask kept at the original resolution may have the padded
        # batch's size by chance.
        aligned = tuple(gt.shape[-2:]) == (h, w)
        if aligned:
            gt = pad_to(gt, height, width, IGNORE_INDEX)
        inputs.append(pad_to(img, height, width))
        meta = dict(item.get('meta', {}))
        meta.setdefault('img_shape', (int(h), int(w)))
        meta['gt_aligned'] = aligned
        metas.append(meta)
        gts.append(gt)
    if len({tuple(gt.shape) for gt in gts}) == 1:
        gts = torch.stack(gts).unbind(0)
    samples = [BaseDataElement(gt_sem_seg=gt, metainfo=meta) for gt, meta in zip(gts, metas)]
    return {'inputs': torch.stack(inputs), 'data_samples': samples}


@MODELS.register_module()
class SegDataPreprocessor(NormalizePadPreprocessor):
    """Moves a batch to the device, repeats grey images to RGB, normalises, and pads to a size divisor, the masks
    padded with their images with 255 (ignored), as mmseg's SegDataPreProcessor (see
    :class:`NormalizePadPreprocessor` for the arguments). The :class:`Segmentor` re-pads the loss's targets with its
    own ``ignore_index``. Masks that :func:`seg_collate` sent compact (uint8/int16/int32) are widened to int64 once
    on the device, for the loss and the metrics."""

    def forward(self, data: Dict, training: bool = False) -> Dict:
        data = super().forward(data, training)
        for sample in data.get('data_samples') or ():
            gt = sample.get('gt_sem_seg')
            if gt is not None and gt.dtype in _MASK_DTYPES[:-1]:
                sample.gt_sem_seg = gt.long()
        return data

    def pad_samples(self, samples: List[BaseDataElement], size: Sequence[int], pad: Sequence[int]) -> None:
        for sample in samples:
            gt = sample.get('gt_sem_seg')
            # seg_collate's record; a sample built without it is taken as padded with its image if of the batch's size
            if gt is not None and sample.metainfo.get('gt_aligned', tuple(gt.shape[-2:]) == tuple(size)):
                sample.gt_sem_seg = F.pad(gt, (0, pad[1], 0, pad[0]), value=IGNORE_INDEX)


@MODELS.register_module()
class SegCrossEntropyLoss(nn.Module):
    """Per-pixel cross-entropy that skips ``ignore_index``.

    By default the sum is divided by all pixels, ignored ones included: mmsegmentation's CrossEntropyLoss with
    ``avg_non_ignore=False`` (its default, which the BiFormer and NAT ADE20K runs used). A batch with every pixel
    ignored then gives 0, not NaN.

    Args:
        ignore_index: Label to skip.
        avg_non_ignore: Average over the non-ignored pixels only.
        loss_weight: Factor on the loss.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, avg_non_ignore: bool = False, loss_weight: float = 1.0):
        super().__init__()
        self.ignore_index = ignore_index
        self.avg_non_ignore = avg_non_ignore
        self.loss_weight = loss_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction='none')
        count = (target != self.ignore_index).sum() if self.avg_non_ignore else target.numel()
        return self.loss_weight * loss.sum() / max(int(count), 1)


def _build(cfg: Union[Dict, nn.Module, Callable], what: str):
    if isinstance(cfg, dict):
        return MODELS.build(cfg)
    if isinstance(cfg, nn.Module) or callable(cfg):
        return cfg
    raise TypeError(f'{what} must be a config dict, an nn.Module or a callable, got {type(cfg).__name__}')


def _palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class, none of them dark, so every class shows on the overlay."""
    rng = np.random.default_rng(12345)
    return rng.integers(40, 256, size=(max(num_classes, 1), 3), dtype=np.uint8)


@HOOKS.register_module()
class SegPredictionImagesHook(ShowDirHook):
    """Saves, per test image, the image blended with the predicted mask beside the image blended with the
    ground truth (ignored pixels left unblended) to ``out_dir`` (tools/test.py --show-dir).

    Args:
        out_dir: Folder to write PNGs to.
        max_images: Stop after this many images.
        alpha: Weight of the mask colour in the blend.
    """

    def __init__(self, out_dir: str, max_images: int = 64, alpha: float = 0.5):
        super().__init__(out_dir, max_images)
        self.alpha = alpha

    def _blend(self, image: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
        valid = (mask >= 0) & (mask < len(palette))
        colour = palette[np.clip(mask, 0, len(palette) - 1)]
        out = image.astype(np.float32)
        out[valid] = (1 - self.alpha) * out[valid] + self.alpha * colour[valid]
        return out.round().astype(np.uint8)

    def draw(self, runner, img, sample):
        from PIL import Image
        pred = sample.pred_sem_seg.cpu().numpy().astype(np.int64)
        palette = _palette(int(sample.seg_logits.shape[0]) if 'seg_logits' in sample else int(pred.max()) + 1)
        h, w = sample.metainfo.get('img_shape', img.shape[-2:])
        image = img[:, :h, :w].cpu()
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        image = image.permute(1, 2, 0).numpy().astype(np.uint8)
        if image.shape[:2] != pred.shape:  # predictions at the original resolution: show the image there
            image = np.asarray(Image.fromarray(image).resize(pred.shape[::-1], Image.BILINEAR))
        panels = [self._blend(image, pred, palette)]
        gt = sample.get('gt_sem_seg')
        if gt is not None and tuple(gt.shape[-2:]) == pred.shape:
            gt = gt.cpu().numpy().reshape(pred.shape).astype(np.int64)
            panels.append(self._blend(image, np.where(gt == IGNORE_INDEX, -1, gt), palette))
        gap = np.full((pred.shape[0], 4, 3), 255, np.uint8)
        canvas = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
        return canvas, f"index-{sample.metainfo.get('index', self._written)}"


# tools/test.py --show-dir asks the model which hook draws its predictions.


@MODELS.register_module()
class Segmentor(TaskModel):
    """A semantic segmentation network with its loss behind mmengine's ``forward(inputs, data_samples, mode)``.

    Args:
        network: Config dict (``type=`` a class, built with MODELS) or module mapping float images [B, 3, H, W]
            to logits [B, num_classes, h, w]; it may return ``{'out': logits, 'aux': logits}`` while training, the
            auxiliary logits then adding ``0.4 x`` their loss. Logits are resized (bilinear) to the input size.
        num_classes: Classes; checked against the logits' channels.
        loss: Config dict, module or callable ``loss(logits [B, K, H, W], target [B, H, W]) -> Tensor or dict of
            Tensors`` (a dict is summed); None for :class:`SegCrossEntropyLoss`.
        ignore_index: Label of ignored pixels (used by the default loss and for padding).
        data_preprocessor: Config of the data preprocessor; by default :class:`SegDataPreprocessor` with the
            network's pretrained mean/std where it has a ``pretrained_cfg``, else ImageNet's.
        init_cfg: mmengine initialisation config. Without one the network keeps its own initialisation (and
            pretrained weights): ``init_weights`` does nothing.
    """

    show_hook = SegPredictionImagesHook

    def __init__(self, network: Union[Dict, nn.Module], num_classes: int, loss: Union[None, Dict, nn.Module,
                 Callable] = None, ignore_index: int = IGNORE_INDEX, data_preprocessor: Optional[Dict] = None,
                 init_cfg: Optional[Dict] = None):
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        network = _build(network, 'network')
        if data_preprocessor is None:
            cfg = getattr(network, 'pretrained_cfg', None) or {}
            data_preprocessor = dict(type=SegDataPreprocessor, mean=cfg.get('mean', (0.485, 0.456, 0.406)),
                                     std=cfg.get('std', (0.229, 0.224, 0.225)))
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.network = network
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.loss_fn = SegCrossEntropyLoss(ignore_index) if loss is None else _build(loss, 'loss')

    def _logits(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        out = self.network(inputs)
        outs = dict(out) if isinstance(out, dict) else {'out': out}
        if 'out' not in outs:
            raise KeyError(f"a network returning a dict must hold the main logits under 'out', got {sorted(outs)}")
        for key, logits in outs.items():
            if logits.ndim != 4 or logits.shape[1] != self.num_classes:
                raise ValueError(f'the network\'s {key!r} logits have shape {tuple(logits.shape)}, expected '
                                 f'[B, num_classes={self.num_classes}, h, w]: set num_classes of the network and '
                                 'of the Segmentor alike')
            if logits.shape[-2:] != inputs.shape[-2:]:
                outs[key] = F.interpolate(logits, size=inputs.shape[-2:], mode='bilinear', align_corners=False)
        return outs

    def _forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> torch.Tensor:
        return self._logits(inputs)['out']

    def train_step(self, data, optim_wrapper):
        # The masks are still on the CPU here (the data preprocessor moves them): checked without a device sync.
        if isinstance(data, dict):
            inputs, samples = data.get('inputs'), data.get('data_samples') or ()
            size = tuple(inputs.shape[-2:]) if torch.is_tensor(inputs) else None
            self._check_labels([(i, self._label_map(s, i, size)[0]) for i, s in enumerate(samples)
                                if isinstance(s, BaseDataElement) and torch.is_tensor(s.get('gt_sem_seg'))])
        return super().train_step(data, optim_wrapper)

    @staticmethod
    def _label_map(sample: BaseDataElement, index: int,
                   batch_shape: Optional[Sequence[int]] = None) -> Tuple[torch.Tensor, bool]:
        """(mask [H, W], aligned) of a sample: ``aligned`` when the mask was padded along with its image, and then
        cropped to the image's size, so that the batch's padding (of whatever value) is never read. Aligned is
        seg_collate's record ``gt_aligned``; a sample built without it counts as aligned when its mask has the
        image's or the batch's size."""
        gt = sample.gt_sem_seg
        if gt.ndim == 3 and gt.shape[0] == 1:
            gt = gt[0]
        if gt.ndim != 2:
            raise ValueError(f'sample {index}: gt_sem_seg must be [H, W] (or [1, H, W]), got {list(gt.shape)}')
        h, w = sample.metainfo.get('img_shape', batch_shape or gt.shape)
        aligned = sample.metainfo.get('gt_aligned', tuple(gt.shape) in ((h, w), tuple(batch_shape or (h, w))))
        return (gt[:h, :w] if aligned else gt), bool(aligned)

    def _check_labels(self, masks: Sequence[Tuple[int, torch.Tensor]]) -> None:
        """A mask label outside 0..num_classes-1 (other than ignore_index) fails in the loss as "Target 3 is out of
        bounds" (a device-side assert on GPUs), and a float one such as 1.7 would be truncated: name them instead.
        Takes (sample index, mask without the batch's padding); only masks on the CPU are read."""
        for index, gt in masks:
            if gt.device.type != 'cpu' or not gt.numel():
                continue
            _check_whole_labels(gt, f'sample {index}: gt_sem_seg')
            labels = gt[gt != self.ignore_index]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                bad = int(labels.max()) if int(labels.max()) >= self.num_classes else int(labels.min())
                raise ValueError(f'sample {index}: the mask holds label {bad}, but model.num_classes='
                                 f'{self.num_classes} (labels 0..{self.num_classes - 1}, {self.ignore_index} ignored): '
                                 "set num_classes of the model, its network and its loss to the dataset's number of "
                                 'classes')

    def _targets(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> torch.Tensor:
        if not data_samples or any(s.get('gt_sem_seg') is None for s in data_samples):
            raise ValueError("mode='loss' needs a gt_sem_seg in every data sample")
        if len(data_samples) != len(inputs):
            raise ValueError(f"mode='loss' got {len(data_samples)} data samples for {len(inputs)} images: pass one "
                             'per image')
        height, width = inputs.shape[-2:]
        masks = []
        for index, sample in enumerate(data_samples):
            h, w = sample.metainfo.get('img_shape', (height, width))
            if h > height or w > width:
                raise ValueError(f'sample {index}: img_shape {(h, w)} is larger than the input {(height, width)}')
            gt, aligned = self._label_map(sample, index, (height, width))
            if not aligned or tuple(gt.shape) != (h, w):
                # Padded into the top-left corner, a smaller or larger mask would be trained on out of place.
                raise ValueError(f'sample {index}: gt_sem_seg of shape {tuple(gt.shape)} does not match its image '
                                 f'{(h, w)}: training needs masks of their image\'s size (transform image and mask '
                                 'together; masks kept at the original resolution are for evaluation)')
            masks.append((index, gt))
        self._check_labels(masks)
        # Padded here with this model's ignore_index (collate and preprocessor pad with 255, which may be a class).
        return torch.stack([F.pad(gt.to(inputs.device).long(), (0, width - gt.shape[1], 0, height - gt.shape[0]),
                                  value=self.ignore_index) for _, gt in masks])

    def _loss(self, logits: torch.Tensor, target: torch.Tensor):
        """(total, parts to log) of one set of logits; a loss returning a dict is summed, unless the dict gives
        its total under 'loss'."""
        value = self.loss_fn(logits, target)
        if not isinstance(value, dict):
            return value, {'ce' if isinstance(self.loss_fn, SegCrossEntropyLoss) else 'main': value}
        parts = {k: v for k, v in value.items() if k != 'loss'}
        if not parts and 'loss' not in value:
            raise ValueError('the loss returned an empty dict')
        return (value['loss'] if 'loss' in value else sum(parts.values())), parts

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]) -> Dict[str, torch.Tensor]:
        """Loss terms: 'loss' (the total that is back-propagated) and its parts for the log, the auxiliary head's
        prefixed 'aux_' (weighted 0.4 like the total)."""
        target = self._targets(inputs, data_samples)
        outs = self._logits(inputs)
        total, parts = self._loss(outs['out'], target)
        if 'aux' in outs:
            aux_total, aux_parts = self._loss(outs['aux'], target)
            total = total + AUX_LOSS_WEIGHT * aux_total
            parts.update({f'aux_{k}': AUX_LOSS_WEIGHT * v for k, v in aux_parts.items()})
        return {'loss': total, **parts}

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None):
        """Sets ``seg_logits`` [K, H, W] and ``pred_sem_seg`` [H, W] on each sample, at the size of its
        gt_sem_seg when it has one (masks kept at the original resolution, ``gt_aligned`` False: the logits are
        resized to it), else at its image's size before padding (a mask padded with its image is cropped back)."""
        logits = self._logits(inputs)['out'].float()
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(len(logits))]
        if len(data_samples) != len(logits):
            raise ValueError(f"mode='predict' got {len(data_samples)} data samples for {len(logits)} images: pass one "
                             'per image, or none')
        for index, (sample, sample_logits) in enumerate(zip(data_samples, logits)):
            h, w = sample.metainfo.get('img_shape', sample_logits.shape[-2:])
            sample_logits = sample_logits[:, :h, :w]
            if sample.get('gt_sem_seg') is not None:
                gt, aligned = self._label_map(sample, index, inputs.shape[-2:])
                if not aligned:  # kept at another resolution: the prediction is brought to it
                    sample.set_data(dict(zip(('seg_logits', 'pred_sem_seg'), self.predict_at(sample_logits,
                                                                                             tuple(gt.shape)))))
                    continue
                sample.gt_sem_seg = sample.gt_sem_seg[..., :h, :w]  # padded along with the image: crop back
            sample.set_data({'seg_logits': sample_logits, 'pred_sem_seg': sample_logits.argmax(dim=0)})
        return data_samples

    def predict_at(self, logits: torch.Tensor, size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, label map) for a ground truth kept at another resolution than the input: here the logits are
        resized bilinearly to it (mmseg's rule); subclasses may follow another protocol."""
        logits = F.interpolate(logits[None], size=size, mode='bilinear', align_corners=False)[0]
        return logits, logits.argmax(dim=0)

    def parse_losses(self, losses: Dict[str, torch.Tensor]):
        """Back-propagates ``losses['loss']`` only; see :func:`parse_total_loss`."""
        return parse_total_loss(losses)
