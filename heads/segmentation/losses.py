"""Segmentation losses of ParaTransCNN (and TransUNet, whose ``utils.DiceLoss`` the official code keeps).

Official: https://github.com/HongkunSun/ParaTransCNN/blob/main/utils.py (DiceLoss) and trainer.py
(``0.5 * CrossEntropyLoss + 0.5 * DiceLoss(softmax=True)``).
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['DiceLoss', 'CEDiceLoss']


class DiceLoss(nn.Module):
    """Soft Dice loss over all classes, as the official ``utils.DiceLoss(n_classes)(logits, target, softmax=True)``.

    The official quirks, kept on purpose:
    - softmax over all classes, and the background class counts in the mean like any other;
    - one Dice per class over the **whole batch** (not per image), averaged over classes;
    - squared terms in the denominator: ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` with ``s = 1e-5``,
      so a class absent from the batch adds about 1 to the sum unless its probabilities are almost exactly 0
      (``s`` is tiny), which pushes absent classes hard towards zero probability;
    - an optional per-class weight multiplies each class's loss, and the sum is divided by the number of classes
      (not by the weights' sum).

    Pixels labelled ``ignore_index`` (which the official data never have) are left out of every sum.

    Args:
        num_classes: Number of classes K (background included).
        smooth: The additive constant of numerator and denominator.
        softmax: Apply a softmax to the input (True for logits, as the official training does).
        ignore_index: Label of pixels left out.
    """

    def __init__(self, num_classes: int, smooth: float = 1e-5, softmax: bool = True, ignore_index: int = 255):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        self.num_classes = num_classes
        self.smooth = smooth
        self.softmax = softmax
        self.ignore_index = ignore_index

    def forward(self, inputs: torch.Tensor, target: torch.Tensor,
                weight: Optional[Sequence[float]] = None) -> torch.Tensor:
        """Loss of scores [B, K, H, W] against labels [B, H, W]."""
        if inputs.ndim != 4 or inputs.shape[1] != self.num_classes:
            raise ValueError(f'DiceLoss expects scores [B, {self.num_classes}, H, W], got {tuple(inputs.shape)}')
        if target.shape != inputs.shape[:1] + inputs.shape[2:]:
            raise ValueError(f'DiceLoss: target {tuple(target.shape)} does not match scores {tuple(inputs.shape)}')
        probs = inputs.float().softmax(dim=1) if self.softmax else inputs.float()
        valid = (target != self.ignore_index)
        labels = torch.where(valid, target, torch.zeros_like(target)).long()
        if valid.any() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f'DiceLoss: labels must lie in [0, {self.num_classes}) or equal ignore_index='
                             f'{self.ignore_index}, got values in [{int(labels.min())}, {int(labels.max())}]')
        mask = valid.unsqueeze(1).to(probs.dtype)
        one_hot = F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype) * mask
        probs = probs * mask
        dims = (0, 2, 3)
        intersect = (probs * one_hot).sum(dims)
        dice = (2 * intersect + self.smooth) / ((probs * probs).sum(dims) + (one_hot * one_hot).sum(dims) + self.smooth)
        per_class = 1 - dice
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=per_class.dtype, device=per_class.device)
            if weight.shape != per_class.shape:  # one weight per class, as the official loop reads weight[i]
                raise ValueError(f'DiceLoss: weight must hold one value per class ({self.num_classes}), got '
                                 f'shape {tuple(weight.shape)}')
            per_class = per_class * weight
        return per_class.sum() / self.num_classes


class CEDiceLoss(nn.Module):
    """``ce_weight * CrossEntropy + dice_weight * DiceLoss``, the official 0.5/0.5 objective.

    Args:
        num_classes: Number of classes (background included).
        ce_weight: Weight of the cross-entropy (mean over non-ignored pixels).
        dice_weight: Weight of :class:`DiceLoss`.
        ignore_index: Label of pixels left out of both terms.
    """

    def __init__(self, num_classes: int, ce_weight: float = 0.5, dice_weight: float = 0.5, ignore_index: int = 255):
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.dice = DiceLoss(num_classes, ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits [B, K, H, W] against labels [B, H, W]."""
        target = target.long()
        ce = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction='sum')
        # the mean over the labelled pixels (the official loss); 0, not NaN, when every pixel is ignored
        ce = ce / (target != self.ignore_index).sum().clamp(min=1)
        return self.ce_weight * ce + self.dice_weight * self.dice(logits, target)
