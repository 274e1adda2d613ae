"""The losses of CORE-ReID (official ``reid/loss/``): label-smoothed cross-entropy, the soft-margin batch-hard triplet
loss, and the combined target-domain loss over the global and part views."""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['CrossEntropyLabelSmooth', 'SoftTripletLoss', 'CoreReIDLoss', 'pairwise_euclidean', 'batch_hard']


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Euclidean distances [M, N] with the official clamp at 1e-12 before the square root (so d(x, x) = 1e-6)."""
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
        self.num_classes, self.epsilon = num_classes, epsilon

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f'logits must be [B, {self.num_classes}], got {tuple(logits.shape)}')
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f'labels must lie in [0, {self.num_classes}), got {int(labels.min())}..'
                             f'{int(labels.max())}')
        log_probs = logits.log_softmax(dim=1)
        targets = torch.full_like(log_probs, self.epsilon / self.num_classes)
        targets.scatter_add_(1, labels.view(-1, 1), log_probs.new_full((len(labels), 1), 1 - self.epsilon))
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
