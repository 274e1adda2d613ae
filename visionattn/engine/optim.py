"""Optimizer wrappers of the official recipes that mmengine lacks, registered for the ``optim_wrapper`` configs, the
checks of ``optim_wrapper.paramwise_cfg`` that mmengine's constructor does not make, and the config's optimizer settings
on resume (:func:`apply_config_optimizer_settings`)."""
import copy
import difflib
import math
import numbers
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from mmengine.optim import BaseOptimWrapper, OptimWrapper, OptimWrapperDict
from timm.utils import adaptive_clip_grad
from torch.optim import Optimizer

from .registry import OPTIM_WRAPPERS

__all__ = ['AGCOptimWrapper', 'check_optim_wrapper_args', 'check_paramwise_cfg', 'check_custom_keys',
           'PARAMWISE_KEYS', 'apply_config_optimizer_settings']

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


# ------------------------------------------------------------------------------------------------------------------
# The optimizer's settings on resume

# An option that, turned on, needs a per-parameter state the checkpoint's run did not keep: the optimizer's step would
# fail on the missing key (torch's Adam/AdamW amsgrad; timm's and transformers' Adafactor beta1).
_STATE_OPTIONS = {'amsgrad': 'max_exp_avg_sq', 'beta1': 'exp_avg'}
_UNSET = object()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            torch.equal(a.detach().cpu(), b.detach().cpu())
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(map(_same, a, b))
    return a is b or a == b


def _wrappers(optim_wrapper, saved) -> List[Tuple[str, BaseOptimWrapper, Optional[Dict]]]:
    """``(config path, optimizer wrapper, its state in the checkpoint)`` of each optimizer of the run."""
    if isinstance(optim_wrapper, OptimWrapperDict):
        saved = saved if isinstance(saved, dict) else {}
        return [(f'optim_wrapper.{name}', w, saved.get(name)) for name, w in optim_wrapper.items()]
    if isinstance(optim_wrapper, BaseOptimWrapper):
        return [('optim_wrapper', optim_wrapper, saved)]
    return []


def _scheduled(wrapper: BaseOptimWrapper, schedulers) -> Optional[set]:
    """The parameter-group keys that ``schedulers`` write in ``wrapper``'s groups; None if one of them is of an
    unknown kind."""
    from .schedules import named_schedulers, scheduled_keys
    keys = set()
    for _, s in named_schedulers(schedulers):
        if hasattr(s, 'optimizer') and not any(s.optimizer is o for o in (wrapper, wrapper.optimizer)):
            continue  # another optimizer's
        own = scheduled_keys(s)
        if own is None:
            return None
        keys |= own
    return keys


def _off(value) -> bool:
    return value is None or value is False or value is _UNSET


def _show(value) -> str:
    return 'unset' if value is _UNSET else str(value.tolist() if isinstance(value, torch.Tensor) else value)


def apply_config_optimizer_settings(optim_wrapper, schedulers, saved, filename: str, logger=None) -> None:
    """Put this config's optimizer settings into ``saved`` (the checkpoint's optimizer state), before mmengine loads
    it into ``optim_wrapper`` (as this config built it, not yet resumed), for every key that no scheduler drives;
    logged through ``logger``.

    mmengine loads the optimizer's state whole, its param_groups with it, so a weight decay, momentum, betas or eps
    changed for the resumed run was ignored without a word, while the lr follows the config's schedule. The config
    wins, as the schedule's does: these settings are constants of a run, changed on purpose, and the optimizer's state
    (momentum buffers, Adam's moments) stays valid under new values. Each parameter group gets what a fresh run of
    this config builds for it (paramwise_cfg's multipliers and custom_keys included); what a scheduler drives stays
    the checkpoint's, or the config's schedule replayed (:func:`~.schedules.apply_config_schedule`). Only the options
    of the optimizer's constructor (and paramwise_cfg's lr_mult / decay_mult notes) are put in: other keys may be the
    optimizer's progress (timm's Lookahead counts its steps in the groups). Where the options or the scheduled keys
    cannot be known, the checkpoint's settings are kept and the differing ones named. Put in before loading, so that
    torch places the state (Adam's step) by the config's ``fused`` / ``capturable``.

    Raises:
        CheckpointMismatchError: The config turns on an option (amsgrad) whose state the checkpoint's run did not
            keep: the optimizer's first step would fail on it.
    """
    from visionattn.hub import CheckpointMismatchError

    from .config_checks import _parameters
    applied, kept = [], []
    for where, wrapper, state in _wrappers(optim_wrapper, saved):
        if not isinstance(state, dict) or not isinstance(state.get('param_groups'), list):
            continue
        groups = wrapper.param_groups  # with mmengine's group of base settings last, where it keeps one
        old_groups = state['param_groups'] + ([state['base_param_settings']] if 'base_param_settings' in state
                                              else [])
        real = len(wrapper.optimizer.param_groups)
        if len(groups) != len(old_groups) or real != len(state['param_groups']):
            continue  # torch's load names the mismatch (see VisionRunner.resume)
        options = _parameters(type(wrapper.optimizer))
        scheduled = _scheduled(wrapper, schedulers)
        if options is None or scheduled is None:
            # which keys are settings is unknown: keep mmengine's behaviour, but say what it keeps
            skip = {'params', 'param_names'} | (scheduled or set())
            differ = sorted({k for g, o in zip(groups, old_groups) for k in g.keys() & o.keys()
                             if k not in skip and not _same(g[k], o[k])})
            if differ:
                why = f'the options of {type(wrapper.optimizer).__name__} cannot be read: it takes **kwargs' \
                    if options is None else 'a parameter scheduler of an unknown kind may drive them'
                kept.append(f'{where}: {", ".join(differ)} ({why})')
            continue
        keys = (set(options) | set(_CUSTOM_KEY_MULTS)) - scheduled - {'params', 'param_names'}
        changes: Dict[str, List] = {}  # key: [first old value, first new value, groups changed]
        for i, (group, old) in enumerate(zip(groups, old_groups)):
            for key in sorted(keys & (group.keys() | old.keys())):
                new, before = group.get(key, _UNSET), old.get(key, _UNSET)
                if new is _UNSET and key not in _CUSTOM_KEY_MULTS:
                    continue
                if _same(new, before):
                    continue
                if i < real and key in _STATE_OPTIONS and not _off(new) and _off(before):
                    needed = _STATE_OPTIONS[key]
                    if any(s and needed not in s for s in (state.get('state', {}).get(p) for p in old['params'])):
                        raise CheckpointMismatchError(
                            f'checkpoint {filename}: this config sets {where}.optimizer {key}={new!r}, the run that '
                            f'saved it {_show(before)}, so its optimizer state holds no {needed!r} and the first step '
                            f'would fail on it: resume with {key}={_show(before)}, or start from its weights only with '
                            f'--cfg-options load_from={filename} resume=False')
                if new is _UNSET:
                    del old[key]
                else:
                    old[key] = copy.deepcopy(new)
                if i < real:  # (not mmengine's group of base settings)
                    changes.setdefault(key, [before, new, 0])[2] += 1
        if changes:
            applied.append(f'{where}: ' + ', '.join(
                f'{key} {_show(a)} -> {_show(b)}' + (f' (in {n} of {real} parameter groups)' if real > 1 else '')
                for key, (a, b, n) in changes.items()))
    if logger is None:
        return
    if applied:
        logger.warning(f'resuming {filename} with this config\'s optimizer settings, not the checkpoint\'s: '
                       f'{"; ".join(applied)}')
    if kept:
        logger.warning(f'resuming {filename} with the checkpoint\'s optimizer settings where this config\'s differ: '
                       f'{"; ".join(kept)}')
