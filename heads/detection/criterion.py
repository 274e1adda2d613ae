"""Focus-DETR's training losses: DINO's set criterion (focal class loss, L1 and GIoU box losses on the last decoder
layer, the auxiliary layers, the two-stage encoder proposals and the contrastive-denoising copies) plus the
foreground supervision of the token selector.

Follows the official code (huawei-noah/noah-research ``Focus-DETR/projects/focus_detr/modeling/``
``two_stage_criterion.py``, ``dn_criterion.py``, ``foreground_supervision.py``, and detrex's
``detrex/modeling/criterion/criterion.py``; Apache-2.0), written afresh:

- class loss: sigmoid focal (alpha 0.25, gamma 2) over every query and class against one-hot matched labels,
  summed and divided by the number of target boxes (detrex's ``loss.mean(1).sum() / num_boxes * num_queries``);
- box losses: L1 over cxcywh and 1 - GIoU of the matched pairs, summed / num_boxes;
- ``num_boxes``: the batch's target count, averaged over the distributed processes, at least 1;
- denoising: the positive copies of group g sit at ``g * single_padding + j`` for target j; normalised by
  ``num_boxes * dn_groups``;
- foreground loss (``select_loss`` in the official code, ``loss_foreground`` here, weight 1.5): FCOS-style binary
  targets on every token of every level (strides 8/16/32/64, max-ltrb ranges (-1, 64], (64, 128], (128, 256],
  (256, inf); the token centre ``i * stride + stride // 2`` must lie strictly inside a box, no centre sampling),
  binary focal loss of the raw selector scores of all tokens (padding included), summed per image, divided by that
  image's positive count (at least 1), averaged over images.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .matcher import HungarianMatcher

__all__ = ['FocusDETRCriterion', 'foreground_targets', 'default_fg_ranges', 'make_weight_dict']


def default_fg_ranges(num_levels: int) -> List[Tuple[float, float]]:
    """The official size ranges for 4 levels, [-1, 64], [64, 128], [128, 256], [256, inf); other level counts
    continue the doubling (64 * 2 ** (i - 1) to 64 * 2 ** i)."""
    ranges = [(-1.0 if i == 0 else 64.0 * 2 ** (i - 1), 64.0 * 2 ** i) for i in range(num_levels)]
    ranges[-1] = (ranges[-1][0], float('inf'))
    return ranges


def make_weight_dict(num_decoder_layers: int = 6, class_weight: float = 1.0, bbox_weight: float = 5.0,
                     giou_weight: float = 2.0, foreground_weight: float = 1.5) -> Dict[str, float]:
    """The official weight_dict: the same 1/5/2 weights for the last layer, each auxiliary layer (``_i``), the
    encoder proposals (``_enc``) and the denoising copies (``_dn``, ``_dn_i``), plus the foreground loss."""
    base = {'loss_class': class_weight, 'loss_bbox': bbox_weight, 'loss_giou': giou_weight}
    weights = dict(base)
    for suffix in ['_enc', '_dn'] + [f'_{i}' for i in range(num_decoder_layers - 1)] + \
            [f'_dn_{i}' for i in range(num_decoder_layers - 1)]:
        weights.update({k + suffix: v for k, v in base.items()})
    weights['loss_foreground'] = foreground_weight
    return weights


@torch.no_grad()
def foreground_targets(spatial_shapes: Sequence[Tuple[int, int]], strides: Sequence[int],
                       boxes_xyxy: Sequence[torch.Tensor], ranges: Sequence[Tuple[float, float]]) -> torch.Tensor:
    """Binary foreground labels [B, sum H*W] of the flattened multi-level tokens (Focus-DETR's ``GenTargets``).

    Args:
        spatial_shapes: (H, W) of each level, in flattening order.
        strides: Stride of each level in input pixels.
        boxes_xyxy: Per image [M, 4] boxes in input pixels (x0, y0, x1, y1).
        ranges: Per level (lo, hi]: a token is positive for a box only if lo < max(l, t, r, b) <= hi.
    """
    if not len(spatial_shapes) == len(strides) == len(ranges):
        raise ValueError(f'one stride and one range per level: {len(spatial_shapes)} levels, {len(strides)} '
                         f'strides, {len(ranges)} ranges')
    device = boxes_xyxy[0].device if len(boxes_xyxy) else torch.device('cpu')
    out = []
    for boxes in boxes_xyxy:
        levels = []
        for (h, w), stride, (lo, hi) in zip(spatial_shapes, strides, ranges):
            ys = torch.arange(int(h), device=device, dtype=torch.float32) * stride + stride // 2
            xs = torch.arange(int(w), device=device, dtype=torch.float32) * stride + stride // 2
            y, x = torch.meshgrid(ys, xs, indexing='ij')
            x, y = x.reshape(-1, 1), y.reshape(-1, 1)
            if boxes.numel() == 0:
                levels.append(torch.zeros(x.shape[0], device=device))
                continue
            b = boxes.to(device=device, dtype=torch.float32)
            ltrb = torch.stack([x - b[:, 0], y - b[:, 1], b[:, 2] - x, b[:, 3] - y], -1)  # [HW, M, 4]
            inside = ltrb.min(-1).values > 0
            reach = ltrb.max(-1).values
            pos = inside & (reach > lo) & (reach <= hi)
            levels.append(pos.any(-1).float())
        out.append(torch.cat(levels))
    return torch.stack(out)


def _num_boxes(targets: Sequence[Dict], device) -> float:
    n = torch.as_tensor([float(sum(len(t['labels']) for t in targets))], device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        world = dist.get_world_size()
    return max(n.item() / world, 1.0)


class FocusDETRCriterion(nn.Module):
    """The unweighted Focus-DETR losses; ``weight_dict`` holds the official weights, applied by the model.

    Args:
        num_classes: Foreground classes K (no background logit).
        matcher: The Hungarian matcher (default: costs 2/5/2).
        weight_dict: Loss weights (default :func:`make_weight_dict` of ``num_decoder_layers`` and the weights below).
        alpha: Focal alpha of the class and foreground losses.
        gamma: Focal gamma of the class and foreground losses.
        fg_ranges: Per-level (lo, hi] max-ltrb ranges of the foreground targets (default the official ones).
        num_decoder_layers: Decoder layers, for the default ``weight_dict``.
        class_weight: Focal class loss weight of the default ``weight_dict`` (every layer, proposals, denoising).
        bbox_weight: L1 box loss weight of the default ``weight_dict``.
        giou_weight: GIoU loss weight of the default ``weight_dict``.
        foreground_weight: Foreground (token selector) loss weight of the default ``weight_dict``.
    """

    def __init__(self, num_classes: int, matcher: Optional[HungarianMatcher] = None,
                 weight_dict: Optional[Dict[str, float]] = None, alpha: float = 0.25, gamma: float = 2.0,
                 fg_ranges: Optional[Sequence[Tuple[float, float]]] = None, num_decoder_layers: int = 6,
                 class_weight: float = 1.0, bbox_weight: float = 5.0, giou_weight: float = 2.0,
                 foreground_weight: float = 1.5):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        if weight_dict is None:
            weight_dict = make_weight_dict(num_decoder_layers, class_weight, bbox_weight, giou_weight,
                                           foreground_weight)
        self.weight_dict = dict(weight_dict)
        self.alpha, self.gamma = alpha, gamma
        self.fg_ranges = None if fg_ranges is None else [tuple(r) for r in fg_ranges]

    # -- set losses ----------------------------------------------------------------------------------------------
    def loss_labels(self, outputs: Dict, targets: Sequence[Dict], indices, num_boxes: float) -> Dict[str, torch.Tensor]:
        logits = outputs['pred_logits']
        onehot = torch.zeros_like(logits)
        batch_idx, query_idx = self._src_index(indices, logits.device)
        labels = torch.cat([t['labels'][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        onehot[batch_idx, query_idx, labels] = 1.0
        loss = sigmoid_focal_loss(logits, onehot, alpha=self.alpha, gamma=self.gamma, reduction='sum')
        return {'loss_class': loss / num_boxes}

    def loss_boxes(self, outputs: Dict, targets: Sequence[Dict], indices, num_boxes: float) -> Dict[str, torch.Tensor]:
        boxes = outputs['pred_boxes']
        batch_idx, query_idx = self._src_index(indices, boxes.device)
        src = boxes[batch_idx, query_idx]
        tgt = torch.cat([t['boxes'][j] for t, (_, j) in zip(targets, indices)]).to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction='none').sum() / num_boxes
        giou = generalized_box_iou(box_convert(src, 'cxcywh', 'xyxy'), box_convert(tgt, 'cxcywh', 'xyxy'))
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {'loss_bbox': loss_bbox, 'loss_giou': loss_giou}

    @staticmethod
    def _src_index(indices, device) -> Tuple[torch.Tensor, torch.Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        return batch_idx, query_idx

    def set_losses(self, outputs: Dict, targets: Sequence[Dict], indices, num_boxes: float,
                   suffix: str = '') -> Dict[str, torch.Tensor]:
        losses = {**self.loss_labels(outputs, targets, indices, num_boxes),
                  **self.loss_boxes(outputs, targets, indices, num_boxes)}
        return {k + suffix: v for k, v in losses.items()}

    # -- denoising -----------------------------------------------------------------------------------------------
    @staticmethod
    def dn_indices(targets: Sequence[Dict], dn_meta: Dict) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The fixed (query, target) pairs of the positive denoising copies."""
        groups, single_padding = dn_meta['dn_num'], dn_meta['single_padding']
        indices = []
        for t in targets:
            n = len(t['labels'])
            tgt = torch.arange(n, dtype=torch.int64).repeat(groups)
            query = (torch.arange(groups, dtype=torch.int64)[:, None] * single_padding
                     + torch.arange(n, dtype=torch.int64)[None]).flatten()
            indices.append((query, tgt))
        return indices

    def dn_losses(self, outputs: Dict, targets: Sequence[Dict], num_boxes: float,
                  num_aux: int) -> Dict[str, torch.Tensor]:
        dn = outputs.get('dn_outputs')
        losses = {}
        if dn is None:
            zero = outputs['pred_logits'].new_zeros(())
            for suffix in ['_dn'] + [f'_dn_{i}' for i in range(num_aux)]:
                losses.update({f'loss_class{suffix}': zero, f'loss_bbox{suffix}': zero, f'loss_giou{suffix}': zero})
            return losses
        meta = dn['dn_meta']
        indices = self.dn_indices(targets, meta)
        norm = num_boxes * meta['dn_num']
        losses.update(self.set_losses(dn, targets, indices, norm, '_dn'))
        for i, aux in enumerate(dn.get('aux_outputs', [])):
            losses.update(self.set_losses(aux, targets, indices, norm, f'_dn_{i}'))
        return losses

    # -- foreground ----------------------------------------------------------------------------------------------
    def foreground_loss(self, outputs: Dict, targets: Sequence[Dict]) -> torch.Tensor:
        scores = outputs['foreground_logits']  # [B, N]
        shapes = [tuple(int(v) for v in s) for s in outputs['spatial_shapes'].tolist()]
        strides = outputs['strides']
        ranges = self.fg_ranges if self.fg_ranges is not None else default_fg_ranges(len(shapes))
        boxes = []
        for t, (h, w) in zip(targets, outputs['image_sizes']):
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=scores.device)
            boxes.append(box_convert(t['boxes'].to(scores.device).float(), 'cxcywh', 'xyxy') * scale)
        labels = foreground_targets(shapes, strides, boxes, ranges).to(scores)
        per_image = sigmoid_focal_loss(scores, labels, alpha=self.alpha, gamma=self.gamma).sum(1)
        return (per_image / labels.sum(1).clamp(min=1)).mean()

    def forward(self, outputs: Dict, targets: Sequence[Dict]) -> Dict[str, torch.Tensor]:
        """All unweighted losses of one batch.

        Args:
            outputs: :meth:`FocusDETR.forward`'s dict (``pred_logits``, ``pred_boxes``, ``aux_outputs``,
                ``enc_outputs``, optional ``dn_outputs``, ``foreground_logits``, ``spatial_shapes``, ``strides``,
                ``image_sizes``).
            targets: Per image ``labels`` [M] and ``boxes`` [M, 4] cxcywh normalised by the unpadded size.
        """
        num_boxes = _num_boxes(targets, outputs['pred_logits'].device)
        main = {k: v for k, v in outputs.items() if k in ('pred_logits', 'pred_boxes')}
        losses = self.set_losses(main, targets, self.matcher(main, targets), num_boxes)
        aux_outputs = outputs.get('aux_outputs', [])
        for i, aux in enumerate(aux_outputs):
            losses.update(self.set_losses(aux, targets, self.matcher(aux, targets), num_boxes, f'_{i}'))
        if 'enc_outputs' in outputs:
            enc = outputs['enc_outputs']
            losses.update(self.set_losses(enc, targets, self.matcher(enc, targets), num_boxes, '_enc'))
        losses.update(self.dn_losses(outputs, targets, num_boxes, len(aux_outputs)))
        if 'foreground_logits' in outputs:
            losses['loss_foreground'] = self.foreground_loss(outputs, targets)
        return losses

    def weighted(self, losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The losses that have a weight, multiplied by it (their sum is the training loss)."""
        return {k: v * self.weight_dict[k] for k, v in losses.items() if k in self.weight_dict}
