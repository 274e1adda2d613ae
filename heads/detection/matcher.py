"""Hungarian matching between DETR predictions and ground-truth boxes (Carion et al., "End-to-End Object Detection
with Transformers", ECCV 2020, arXiv 2005.12872), with the focal-loss class cost of Deformable DETR / DINO.

Follows detrex's ``HungarianMatcher`` (IDEA-Research/detrex ``detrex/modeling/matcher/matcher.py``, Apache-2.0) as
Focus-DETR's R50 config sets it: ``cost_class=2.0`` (``focal_loss_cost``, alpha 0.25, gamma 2), ``cost_bbox=5.0``
(L1 over cxcywh), ``cost_giou=2.0``. Written afresh; the assignment itself is scipy's ``linear_sum_assignment``.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

__all__ = ['HungarianMatcher', 'focal_class_cost']


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                     gamma: float = 2.0) -> torch.Tensor:
    """The focal-loss matching cost [N, M] of predictions ``logits`` [N, K] against target ``labels`` [M]:
    the positive focal term minus the negative one at each target's class (Deformable DETR)."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
    pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
    return pos[:, labels] - neg[:, labels]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets minimising
    ``cost_class * focal + cost_bbox * L1 + cost_giou * (-GIoU)``.

    Args:
        cost_class: Weight of the focal class cost.
        cost_bbox: Weight of the L1 distance between cxcywh boxes.
        cost_giou: Weight of the negative generalised IoU.
        alpha: Focal alpha of the class cost.
        gamma: Focal gamma of the class cost.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, alpha: float = 0.25,
                 gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError('at least one of cost_class, cost_bbox, cost_giou must be non-zero')
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = alpha, gamma

    @torch.no_grad()
    def cost_matrices(self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict]) -> List[torch.Tensor]:
        """The cost matrix [num_queries, num_targets_i] of every image, on the CPU."""
        logits, boxes = outputs['pred_logits'], outputs['pred_boxes']
        batch, queries = logits.shape[:2]
        sizes = [len(t['boxes']) for t in targets]
        if sum(sizes) == 0:
            return [logits.new_zeros(queries, 0).cpu() for _ in range(batch)]
        labels = torch.cat([t['labels'] for t in targets]).to(logits.device)
        tgt_boxes = torch.cat([t['boxes'] for t in targets]).to(boxes)
        out_boxes = boxes.flatten(0, 1).float()
        cost = (self.cost_class * focal_class_cost(logits.flatten(0, 1).float(), labels, self.alpha, self.gamma)
                + self.cost_bbox * torch.cdist(out_boxes, tgt_boxes.float(), p=1)
                - self.cost_giou * generalized_box_iou(box_convert(out_boxes, 'cxcywh', 'xyxy'),
                                                       box_convert(tgt_boxes.float(), 'cxcywh', 'xyxy')))
        cost = cost.view(batch, queries, -1).cpu()
        return [c[i] for i, c in enumerate(cost.split(sizes, -1))]

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor],
                targets: Sequence[Dict]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match each image's queries to its targets.

        Args:
            outputs: ``pred_logits`` [B, Q, K] (logits) and ``pred_boxes`` [B, Q, 4] (cxcywh in [0, 1]).
            targets: Per image ``labels`` [M_i] and ``boxes`` [M_i, 4] (cxcywh in [0, 1]).

        Returns:
            Per image ``(query_indices, target_indices)``, int64 tensors of length min(Q, M_i).
        """
        matches = []
        for cost in self.cost_matrices(outputs, targets):
            rows, cols = linear_sum_assignment(cost.numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return matches

    def extra_repr(self) -> str:
        return (f'cost_class={self.cost_class}, cost_bbox={self.cost_bbox}, cost_giou={self.cost_giou}, '
                f'alpha={self.alpha}, gamma={self.gamma}')
