"""Optimizer wrappers of the official recipes that mmengine lacks, registered for the ``optim_wrapper`` configs, and
the checks of ``optim_wrapper.paramwise_cfg`` that mmengine's constructor does not make."""
import difflib
import math
import numbers
from typing import Dict, Iterable, Optional

from mmengine.optim import OptimWrapper
from timm.utils import adaptive_clip_grad
from torch.optim import Optimizer

from .registry import OPTIM_WRAPPERS

__all__ = ['AGCOptimWrapper', 'check_optim_wrapper_args', 'check_paramwise_cfg', 'check_custom_keys',
           'PARAMWISE_KEYS']

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


# ------------------------------------------------------------------------------------------------------------------
# optim_wrapper.paramwise_cfg

# What mmengine's DefaultOptimWrapperConstructor reads from paramwise_cfg (``add_params``, mmengine 0.10): any other
# key, a misspelt ``norm_decy_mult`` say, is silently ignored and the parameters keep the base decay.
PARAMWISE_KEYS = ('custom_keys', 'bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult',
                  'flat_decay_mult', 'dcn_offset_lr_mult', 'bypass_duplicate')
# What a custom_keys entry takes besides the optimizer's own per-group options (lr, momentum, ...), which mmengine
# copies into the parameter group as they are: a misspelt one lands in the group, where torch ignores it.
_CUSTOM_KEY_MULTS = ('lr_mult', 'decay_mult')


def _default_constructor(optim_wrapper: Dict) -> bool:
    """Whether mmengine's own constructor reads the paramwise_cfg (another one, even a subclass, may read other keys
    or none)."""
    from mmengine.optim import DefaultOptimWrapperConstructor
    kind = optim_wrapper.get('constructor', 'DefaultOptimWrapperConstructor')
    return kind in ('DefaultOptimWrapperConstructor', DefaultOptimWrapperConstructor)


def _close(name: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=cutoff)
    return f' (did you mean {" or ".join(close)}?)' if close else ''


def check_paramwise_cfg(optim_wrapper: Dict, where: str = 'optim_wrapper') -> None:
    """The keys of ``optim_wrapper.paramwise_cfg`` and of its ``custom_keys`` entries, where mmengine's
    DefaultOptimWrapperConstructor reads them: it ignores a key it does not know without a word. Which parameters the
    custom keys match needs the model: :func:`check_custom_keys`.

    Raises:
        ConfigError: Naming the key, the close matches and the keys that are read.
    """
    from .config_checks import ConfigError, _parameters, _resolve_type
    paramwise = optim_wrapper.get('paramwise_cfg') if isinstance(optim_wrapper, dict) else None
    if not paramwise or not isinstance(paramwise, dict) or not _default_constructor(optim_wrapper):
        return
    for key in paramwise:
        if key not in PARAMWISE_KEYS:
            raise ConfigError(f'{where}.paramwise_cfg.{key}: mmengine\'s optimizer constructor has no setting {key!r} '
                              f'and would ignore it{_close(key, PARAMWISE_KEYS, 0.8)}. Its settings: '
                              f'{", ".join(PARAMWISE_KEYS)}')
    custom = paramwise.get('custom_keys') or {}
    if not isinstance(custom, dict):
        raise ConfigError(f'{where}.paramwise_cfg.custom_keys must be a dict of parameter-name parts to settings, '
                          f"e.g. {{'backbone': dict(lr_mult=0.1)}}, got {custom!r}")
    optimizer = optim_wrapper.get('optimizer')
    kind = _resolve_type(optimizer.get('type')) if isinstance(optimizer, dict) else None
    takes = _parameters(kind) if kind is not None else None
    for name, settings in custom.items():
        if not isinstance(settings, dict):
            raise ConfigError(f'{where}.paramwise_cfg.custom_keys.{name} must be a dict such as dict(lr_mult=0.1, '
                              f'decay_mult=0.0), got {settings!r}')
        if takes is None:  # an optimizer taking **kwargs, or one not known here
            continue
        known = list(_CUSTOM_KEY_MULTS) + [p for p in takes if p != 'params']
        for key in settings:
            if key not in known:
                raise ConfigError(f'{where}.paramwise_cfg.custom_keys.{name}.{key}: neither lr_mult, decay_mult nor '
                                  f'an option of {kind.__name__}, so mmengine would store it in the parameter group '
                                  f'where nothing reads it{_close(key, known)}')


def check_custom_keys(model, optim_wrapper: Dict, where: str = 'optim_wrapper') -> None:
    """Each ``paramwise_cfg.custom_keys`` entry must apply to a parameter of ``model``, as mmengine's
    DefaultOptimWrapperConstructor matches them: a part of the name ``module.sub.weight`` (``.weight`` for the root's
    own), the longest matching key only. An entry that applies to none, unmatched or always beaten by a longer key,
    is ignored by mmengine without a word. (So a config shared by several model families leaves the names of one
    family's parameters, such as NAT's ``rpb``, to that family's configs.)

    Raises:
        ConfigError: Naming the entry and the close parameter names, or the longer key that takes its parameters.
    """
    from .config_checks import ConfigError
    paramwise = optim_wrapper.get('paramwise_cfg') if isinstance(optim_wrapper, dict) else None
    if not isinstance(paramwise, dict) or not isinstance(paramwise.get('custom_keys'), dict) or \
            not _default_constructor(optim_wrapper):
        return
    custom = paramwise['custom_keys']
    model = getattr(model, 'module', model)  # as the constructor unwraps DDP
    names = [n if '.' in n else f'.{n}' for n, _ in model.named_parameters(remove_duplicate=False)]
    if not names:
        return
    order = sorted(sorted(custom), key=len, reverse=True)  # the constructor's: longest first, then alphabetical
    taken = {}
    for name in names:
        key = next((k for k in order if k in name), None)
        taken.setdefault(key, name)
    for key in (k for k in custom if k not in taken):
        matched = [n for n in names if key in n]
        if matched:
            winner = next(k for k in order if k in matched[0])
            problem = (f'every parameter it matches ({matched[0]}{" ..." if len(matched) > 1 else ""}) takes the '
                       f'longer key {winner!r} first (mmengine applies only the longest matching key)')
        else:
            parts = sorted({p for n in names for p in n.split('.') if p} | {n.lstrip('.') for n in names})
            problem = f'it is part of no parameter name of {type(model).__name__}{_close(key, parts, 0.75)}'
        raise ConfigError(f'{where}.paramwise_cfg.custom_keys[{key!r}] applies to no parameter: {problem}. Its '
                          'settings would be ignored: name a part of the parameter names (model.named_parameters()), '
                          f'e.g. {names[0].lstrip(".")!r}')
