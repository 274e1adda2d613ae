"""The losses of CORE-ReID (official ``reid/loss/``): label-smoothed cross-entropy, the soft-margin batch-hard triplet
loss, and the combined target-domain loss over the global and part views."""
import numbers
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['CrossEntropyLabelSmooth', 'SoftTripletLoss', 'CoreReIDLoss', 'pairwise_euclidean', 'batch_hard']


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [M, N] with the official clamp at 1e-12 before the square root (so d(x, x) = 1e-6)."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f'pairwise_euclidean needs features [M, D] and [N, D] of one width D, got {tuple(x.shape)} '
                         f'and {tuple(y.shape)}')
    squared = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2 * x @ y.t()
    return squared.clamp(min=1e-12).sqrt()


def batch_hard(dist: torch.Tensor, same: torch.Tensor):
    """Hardest positive (largest distance among same labels, the anchor itself included) and hardest negative
    (smallest distance among other labels) of each row, with their column indices."""
    big = torch.finfo(dist.dtype).max / 4
    pos_dist, pos_idx = torch.where(same, dist, dist.new_full((), -big)).max(dim=1)
    neg_dist, neg_idx = torch.where(same, dist.new_full((), big), dist).min(dim=1)
    return pos_dist, neg_dist, pos_idx, neg_idx


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against (1 - eps) one-hot + eps / K targets, averaged over the batch.

    Args:
        num_classes: K.
        epsilon: Smoothing eps (0.1 in CORE-ReID).
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
            raise ValueError(f'CrossEntropyLabelSmooth: num_classes must be a positive whole number, got '
                             f'{num_classes!r}')
        # epsilon > 1 gives negative targets (the loss rewards the wrong classes), 1 uniform ones (nothing to learn)
        if isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not 0 <= epsilon < 1:
            raise ValueError(f'CrossEntropyLabelSmooth: epsilon (label smoothing) must be in [0, 1), got {epsilon!r}')
        self.num_classes, self.epsilon = int(num_classes), float(epsilon)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'logits must be [B, {self.num_classes}], got {tuple(logits.shape)}')
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f'labels must be integer class indices, got a {labels.dtype} tensor')
        labels = labels.reshape(-1)
        if len(labels) != len(logits):  # fewer labels left the other rows with smoothing-only targets, silently
            raise ValueError(f'CrossEntropyLabelSmooth got {len(logits)} rows of logits and {len(labels)} labels: one '
                             'label per row')
        if not len(labels):
            raise ValueError('CrossEntropyLabelSmooth got an empty batch: the mean over no sample is NaN')
        # values are checked where that needs no device sync (the task models check theirs on the CPU)
        if labels.device.type == 'cpu' and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f'labels must lie in [0, {self.num_classes}), got {int(labels.min())}..'
                             f'{int(labels.max())}')
        log_probs = logits.log_softmax(dim=1)
        targets = torch.full_like(log_probs, self.epsilon / self.num_classes)
        targets.scatter_add_(1, labels.view(-1, 1).long(), log_probs.new_full((len(labels), 1), 1 - self.epsilon))
        return -(targets * log_probs).sum(dim=1).mean()


class SoftTripletLoss(nn.Module):
    """Batch-hard triplet loss on log-softmax over (d_ap, d_an) (official ``SoftTripletLoss``).

    With a numeric ``margin`` m the loss is mean(-m log p_ap - (1 - m) log p_an) where (p_ap, p_an) =
    softmax(d_ap, d_an); CORE-ReID uses m = 0, which is the soft-margin triplet loss mean(softplus(d_ap - d_an)).
    With ``margin=None`` the targets are softmax(d_ap, d_an) measured on a reference embedding (``reference``, e.g.
    the teacher's) at the same hard pairs, as in MMT.

    Args:
        margin: m, or None for the reference (soft-label) form.
        normalize_feature: L2-normalise the embeddings first.
    """

    def __init__(self, margin: Optional[float] = 0.0, normalize_feature: bool = False):
        super().__init__()
        self.margin, self.normalize_feature = margin, normalize_feature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        if embeddings.dim() != 2 or labels.shape != (embeddings.shape[0],):
            raise ValueError(f'expected embeddings [B, D] and labels [B], got {tuple(embeddings.shape)} and '
                             f'{tuple(labels.shape)}')
        if not len(labels):
            raise ValueError('SoftTripletLoss got an empty batch: the mean over no anchor is NaN')
        if reference is not None and (reference.dim() != 2 or len(reference) != len(embeddings)):
            raise ValueError(f'SoftTripletLoss: reference must be [B, D\'] with the B={len(embeddings)} rows of the '
                             f'embeddings, got {tuple(reference.shape)}')
        if self.normalize_feature:
            embeddings = F.normalize(embeddings, dim=1)
        dist = pairwise_euclidean(embeddings, embeddings)
        same = labels.view(-1, 1) == labels.view(1, -1)
        pos, neg, pos_idx, neg_idx = batch_hard(dist, same)
        log_p = torch.stack([pos, neg], dim=1).log_softmax(dim=1)
        if self.margin is not None:
            return (-self.margin * log_p[:, 0] - (1 - self.margin) * log_p[:, 1]).mean()
        if reference is None:
            raise ValueError('SoftTripletLoss(margin=None) needs the reference embeddings')
        if self.normalize_feature:
            reference = F.normalize(reference, dim=1)
        ref_dist = pairwise_euclidean(reference, reference)
        rows = torch.arange(len(labels), device=labels.device)
        targets = torch.stack([ref_dist[rows, pos_idx], ref_dist[rows, neg_idx]], dim=1).softmax(dim=1).detach()
        return (-targets * log_p).mean(0).sum()


class CoreReIDLoss(nn.Module):
    """CE_ls(global logits) + Triplet(global) + w * Triplet(upper) + w * Triplet(lower), each view with its own
    pseudo-labels (official ``SingelmeanTrainer``: w = 0.5, triplet margin 0).

    Args:
        num_classes: Number of clusters K.
        part_weight: w.
        epsilon: Label smoothing.
    """

    def __init__(self, num_classes: int, part_weight: float = 0.5, epsilon: float = 0.1):
        super().__init__()
        self.ce = CrossEntropyLabelSmooth(num_classes, epsilon)
        self.triplet = SoftTripletLoss(margin=0.0)
        self.part_weight = part_weight

    def forward(self, views: Dict[str, torch.Tensor], labels: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Returns the terms (mmengine sums every key holding 'loss')."""
        return {'loss_ce': self.ce(views['logits'], labels['global']),
                'loss_tri_global': self.triplet(views['global'], labels['global']),
                'loss_tri_upper': self.part_weight * self.triplet(views['upper'], labels['upper']),
                'loss_tri_lower': self.part_weight * self.triplet(views['lower'], labels['lower'])}
