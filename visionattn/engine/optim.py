"""Optimizer wrappers of the official recipes that mmengine lacks, registered for the ``optim_wrapper`` configs."""
from typing import Dict, Optional

from mmengine.optim import OptimWrapper
from timm.utils import adaptive_clip_grad
from torch.optim import Optimizer

from .registry import OPTIM_WRAPPERS

__all__ = ['AGCOptimWrapper']

_AGC_KEYS = ('clip_factor', 'eps', 'norm_type')


@OPTIM_WRAPPERS.register_module()
class AGCOptimWrapper(OptimWrapper):
    """mmengine's ``OptimWrapper`` that also takes adaptive gradient clipping (AGC, Brock et al. 2021), as timm's
    ``--clip-mode agc --clip-grad FACTOR`` applies it: ``timm.utils.adaptive_clip_grad`` on every parameter of the
    optimizer, after the backward pass and before the step.

    ``clip_grad=dict(type='agc', clip_factor=0.02)`` (optionally ``eps=1e-3``, ``norm_type=2.0``, timm's defaults)
    selects AGC; ``type='norm'`` and ``type='value'`` stay mmengine's. mmengine's ``AmpOptimWrapper`` (``--amp``)
    knows no AGC and refuses ``type='agc'`` at start.

    Args:
        optimizer: The optimizer.
        accumulative_counts: Gradient-accumulation steps, as mmengine's.
        clip_grad: As above, or None for no clipping.
    """

    def __init__(self, optimizer: Optimizer, accumulative_counts: int = 1, clip_grad: Optional[Dict] = None):
        agc = None
        if clip_grad is not None and clip_grad.get('type') == 'agc':
            agc = {k: v for k, v in clip_grad.items() if k != 'type'}
            unknown = sorted(set(agc) - set(_AGC_KEYS))
            if unknown or not agc.get('clip_factor', 0) > 0:
                raise ValueError(f"clip_grad=dict(type='agc', ...) takes a positive clip_factor and optionally eps and "
                                 f'norm_type (timm.utils.adaptive_clip_grad), got {clip_grad!r}')
            clip_grad = None
        super().__init__(optimizer, accumulative_counts=accumulative_counts, clip_grad=clip_grad)
        self.agc_kwargs = agc
        if agc is not None:
            self.clip_grad_kwargs = dict(type='agc', **agc)  # truthy: step() calls _clip_grad()

    def _clip_grad(self) -> None:
        if self.agc_kwargs is None:
            return super()._clip_grad()
        params = [p for group in self.optimizer.param_groups for p in group['params']
                  if p.requires_grad and p.grad is not None]
        if params:
            adaptive_clip_grad(params, **self.agc_kwargs)
