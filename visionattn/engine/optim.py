"""Optimizer wrappers of the official recipes that mmengine lacks, registered for the ``optim_wrapper`` configs."""
import math
import numbers
from typing import Dict, Optional

from mmengine.optim import OptimWrapper
from timm.utils import adaptive_clip_grad
from torch.optim import Optimizer

from .registry import OPTIM_WRAPPERS

__all__ = ['AGCOptimWrapper', 'check_optim_wrapper_args']

_AGC_KEYS = ('clip_factor', 'eps', 'norm_type')
# The keyword arguments of each clipping function, the one that must be given first.
_CLIP_KEYS = {'norm': ('max_norm', 'norm_type', 'error_if_nonfinite', 'foreach'),
              'value': ('clip_value', 'foreach'),
              'agc': _AGC_KEYS}


def _positive(value, zero: bool = False, infinite: bool = False) -> bool:
    if isinstance(value, str) and infinite:
        try:
            value = float(value)
        except ValueError:
            return False
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
        return False
    return (value >= 0 if zero else value > 0) and (infinite or math.isfinite(value))


def check_optim_wrapper_args(accumulative_counts=1, clip_grad: Optional[Dict] = None) -> None:
    """The gradient-accumulation count and the clipping of an optimizer wrapper (mmengine's ``OptimWrapper`` and
    :class:`AGCOptimWrapper`), checked before training. mmengine checks neither's values: ``max_norm`` 0 zeroes every
    gradient, a negative ``max_norm`` reverses it (gradient ascent), a negative ``clip_value`` replaces it by a
    constant, ``accumulative_counts=2.5`` scales the loss by 1/2.5 and steps at irregular iterations.

    Raises:
        ValueError: Naming the option and the value it takes.
    """
    if not isinstance(accumulative_counts, numbers.Integral) or isinstance(accumulative_counts, bool) \
            or accumulative_counts < 1:
        raise ValueError(f'optim_wrapper.accumulative_counts (gradient-accumulation steps) must be a whole number '
                         f'>= 1, got {accumulative_counts!r}')
    if clip_grad is None:
        return
    if not isinstance(clip_grad, dict) or not clip_grad:
        raise ValueError(f"optim_wrapper.clip_grad must be None (no clipping) or a dict such as dict(max_norm=5.0), "
                         f"dict(type='value', clip_value=1.0) or dict(type='agc', clip_factor=0.02), got {clip_grad!r}")
    kind = clip_grad.get('type', 'norm')
    if kind not in _CLIP_KEYS:
        raise ValueError(f"optim_wrapper.clip_grad.type must be 'norm', 'value' or 'agc', got {kind!r}")
    keys = _CLIP_KEYS[kind]
    args = {k: v for k, v in clip_grad.items() if k != 'type'}
    unknown = sorted(set(args) - set(keys))
    if unknown or keys[0] not in args:
        raise ValueError(f"optim_wrapper.clip_grad=dict(type={kind!r}, ...) takes {keys[0]} and optionally "
                         f"{', '.join(keys[1:])}, got {clip_grad!r}")
    if not _positive(args[keys[0]]):
        raise ValueError(f'optim_wrapper.clip_grad.{keys[0]} must be a finite number > 0 (0 would zero every gradient, '
                         f'a negative one reverse or replace it), got {args[keys[0]]!r}')
    if 'norm_type' in args and not _positive(args['norm_type'], infinite=True):
        raise ValueError(f"optim_wrapper.clip_grad.norm_type must be a number > 0 or inf, got {args['norm_type']!r}")
    if 'eps' in args and not _positive(args['eps'], zero=True):
        raise ValueError(f"optim_wrapper.clip_grad.eps must be a finite number >= 0, got {args['eps']!r}")


@OPTIM_WRAPPERS.register_module()
class AGCOptimWrapper(OptimWrapper):
    """mmengine's ``OptimWrapper`` that also takes adaptive gradient clipping (AGC, Brock et al. 2021), as timm's
    ``--clip-mode agc --clip-grad FACTOR`` applies it: ``timm.utils.adaptive_clip_grad`` on every parameter of the
    optimizer, after the backward pass and before the step.

    ``clip_grad=dict(type='agc', clip_factor=0.02)`` (optionally ``eps=1e-3``, ``norm_type=2.0``, timm's defaults)
    selects AGC; ``type='norm'`` and ``type='value'`` stay mmengine's. mmengine's ``AmpOptimWrapper`` (``--amp``)
    knows no AGC and refuses ``type='agc'`` at start. Unlike mmengine's, the clipping settings and the
    accumulation count are checked (:func:`check_optim_wrapper_args`), and the ``clip_grad`` dict is left unchanged.

    Args:
        optimizer: The optimizer.
        accumulative_counts: Gradient-accumulation steps, as mmengine's.
        clip_grad: As above, or None for no clipping.
    """

    def __init__(self, optimizer: Optimizer, accumulative_counts: int = 1, clip_grad: Optional[Dict] = None):
        check_optim_wrapper_args(accumulative_counts, clip_grad)
        agc = None
        if clip_grad is not None:
            clip_grad = dict(clip_grad)  # mmengine pops its 'type'
            if clip_grad.get('type') == 'agc':
                agc = {k: v for k, v in clip_grad.items() if k != 'type'}
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
