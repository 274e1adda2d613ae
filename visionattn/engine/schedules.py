"""The parameter schedules of a training run against its loop and against a resumed checkpoint.

mmengine takes both silently: ``--cfg-options train_cfg.max_epochs=1`` leaves every scheduler's ``end`` and ``T_max``
at the config's values (the run stops at a learning rate the schedule never meant to end on), and a resume restores
each scheduler's whole state, settings included, so a config that extends the schedule is ignored (mmengine issue
1565). :func:`schedule_overruns` names the first case; :func:`apply_config_schedule` resolves the second.
"""
import copy
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence, Set, Tuple

from mmengine.optim.scheduler.param_scheduler import (
    INF,
    OneCycleParamScheduler,
    ReduceOnPlateauParamScheduler,
    _ParamScheduler,
)
from mmengine.runner import EpochBasedTrainLoop

__all__ = ['named_schedulers', 'scheduled_keys', 'schedule_overruns', 'config_schedule_state', 'apply_config_schedule']

# What a scheduler's state holds about where it stands, not about the schedule (its settings are the rest);
# the last three are ReduceOnPlateau's.
_PROGRESS = ('last_step', '_global_step', '_last_value', 'verbose', 'best', 'num_bad_epochs', 'cooldown_counter')


def named_schedulers(schedulers) -> List[Tuple[str, object]]:
    """``(config path, scheduler)`` pairs of a runner's schedulers: a list, or a dict of lists (one per optimizer)."""
    if isinstance(schedulers, dict):
        return [(f'param_scheduler.{name}.{i}', s) for name, group in schedulers.items() for i, s in enumerate(group)]
    if isinstance(schedulers, (list, tuple)):
        return [(f'param_scheduler.{i}', s) for i, s in enumerate(schedulers)]
    return []


def scheduled_keys(scheduler) -> Optional[Set[str]]:
    """The parameter-group keys ``scheduler`` writes; None for a scheduler of another kind, whose keys are unknown."""
    if not isinstance(scheduler, _ParamScheduler):
        return None
    name = scheduler.param_name
    keys = {name, f'initial_{name}'}
    if getattr(scheduler, 'use_betas', False):  # a momentum schedule of an Adam-like optimizer writes betas[0]
        keys.add('betas')
    if isinstance(scheduler, OneCycleParamScheduler):
        keys |= {f'max_{name}', f'min_{name}'}
    return keys


def _epoch_length(loop) -> Optional[int]:
    if not isinstance(loop, EpochBasedTrainLoop):
        return None
    try:
        return len(loop.dataloader)
    except TypeError:  # an iterable dataset
        return None


def schedule_overruns(schedulers, loop) -> List[str]:
    """A message for each scheduler that runs on after the training loop ends: its ``end`` or, for a cosine, its
    ``begin + T_max`` beyond the loop's length (in the scheduler's unit, epochs or iterations). Those that end with
    the loop or before it (a warm-up) pass."""
    epoch_length = _epoch_length(loop)
    messages = []
    for path, s in named_schedulers(schedulers):
        if not isinstance(s, _ParamScheduler):
            continue
        if s.by_epoch:
            if epoch_length is None:  # an iteration loop steps by-epoch schedulers only at its very end
                continue
            total, unit = loop.max_epochs, 'epoch'
        else:
            total, unit = loop.max_iters, 'iteration'
        t_max = getattr(s, 'T_max', None)
        finish = min(s.end, s.begin + t_max) if t_max is not None else s.end
        if finish >= INF or finish <= total:
            continue

        def at(step: int) -> str:
            whole = unit == 'iteration' and epoch_length and step % epoch_length == 0
            return f'{unit} {step}' + (f' (epoch {step // epoch_length})' if whole else '')
        settings = f'begin={s.begin}, end={s.end}' + (f', T_max={t_max}' if t_max is not None else '')
        if epoch_length is not None:
            ends = f'epoch {loop.max_epochs} (iteration {loop.max_iters}; train_cfg.max_epochs={loop.max_epochs})'
        else:
            ends = f'iteration {loop.max_iters} (train_cfg.max_iters={loop.max_iters})'
        never = ', and it never starts' if s.begin >= total else ''
        messages.append(
            f'{path} ({type(s).__name__}: {settings}, in {unit}s) ends at {at(finish)}, after the training loop, '
            f'which ends at {ends}: the run stops before this {s.param_name} schedule has finished{never}. If the '
            f'run was shortened on purpose, shorten the schedule with it ({path}.end, and T_max where the config '
            'sets it, in the config\'s unit); for a smoke run, ignore this')
    return messages


def _copy_state(state: Dict) -> Dict:
    # (a method in it, OneCycle's anneal_func, is kept: deep-copied, it would copy its scheduler and the optimizer)
    return {k: v if callable(v) else copy.deepcopy(v) for k, v in state.items()}


def config_schedule_state(schedulers) -> Optional[Dict]:
    """The schedulers as the config built them, before a resume loads the checkpoint's state into them: each one's
    state and the hyper-parameters of each optimizer they drive. None unless all are built schedulers."""
    named = named_schedulers(schedulers)
    if not named or not all(isinstance(s, _ParamScheduler) for _, s in named):
        return None
    optimizers = {id(s.optimizer): s.optimizer for _, s in named}
    return {'states': [_copy_state(s.state_dict()) for _, s in named],
            'groups': {key: copy.deepcopy([{k: v for k, v in g.items() if k != 'params'} for g in o.param_groups])
                       for key, o in optimizers.items()}}


_UNSET = object()


def _differences(config: Dict, saved: Dict) -> List[str]:
    """``setting old -> new`` for each setting of a scheduler state that the config changes."""
    changed = []
    for key in sorted(set(config) | set(saved)):
        new, old = config.get(key, _UNSET), saved.get(key, _UNSET)
        if key in _PROGRESS or callable(new) or callable(old) or new == old:
            continue
        old, new = ('unset' if v is _UNSET else v for v in (old, new))
        changed.append(f'{"base values" if key == "base_values" else key} {old} -> {new}')
    return changed


def _noop():
    pass


_noop._with_counter = True  # what a scheduler checks on its optimizer's step at its first step


def _replay(schedulers: Sequence[_ParamScheduler], loop) -> None:
    """Step ``schedulers`` as ParamSchedulerHook would have from the start up to the loop's position: the
    iteration-based ones after every iteration, the epoch-based ones after every epoch."""
    per_iter = [s for s in schedulers if not s.by_epoch]
    per_epoch = [s for s in schedulers if s.by_epoch]
    epoch_length, epochs = _epoch_length(loop), 0
    if per_iter:
        for i in range(1, loop.iter + 1):
            for s in per_iter:
                s.step()
            if per_epoch and epoch_length and i % epoch_length == 0 and epochs < loop.epoch:
                for s in per_epoch:
                    s.step()
                epochs += 1
    for _ in range(loop.epoch - epochs):
        for s in per_epoch:
            s.step()


def apply_config_schedule(schedulers, config_state: Dict, saved, loop, filename: str, logger=None) -> None:
    """After mmengine resumed ``saved`` (the checkpoint's scheduler states) into ``schedulers``: where the config's
    schedule differs from the checkpoint's, put the config's in place, at the step it would have reached by the loop's
    position (epoch, iteration), the scheduled values of the optimizers with it; logged through ``logger``.

    The config wins because changing the schedule of a resumed run is a deliberate act (training extended: max_epochs
    and the cosine's end raised together), which mmengine ignores without a word, and refusing would leave no way to
    go on with the optimizer's state. The schedulers are replayed from their first step, not patched in place: they
    compute each value from the previous one, so a changed ``end`` or ``T_max`` would go on from the old curve (a
    finished cosine, extended, would stay at its minimum). Replayed, they give what a run of this config gives.

    Raises:
        CheckpointMismatchError: The schedule differs and holds a ReduceOnPlateau scheduler, whose steps depend on the
            validation history and cannot be replayed.
    """
    from visionattn.hub import CheckpointMismatchError
    named = named_schedulers(schedulers)
    saved_states = [state for _, state in named_schedulers(saved)]
    changes = []
    if len(saved_states) != len(named):
        changes.append(f'the checkpoint holds {len(saved_states)} parameter schedulers, this config '
                       f'{len(named)} (mmengine would pair them by position)')
    for (path, s), config, old in zip(named, config_state['states'], saved_states):
        differences = _differences(config, old) if isinstance(old, dict) else ['not a scheduler state']
        if differences:
            unit = 'epochs' if s.by_epoch else 'iterations'
            changes.append(f'{path} ({type(s).__name__}, in {unit}): {", ".join(differences)}')
    if not changes:
        return
    position = f'epoch {loop.epoch}, iteration {loop.iter}'
    plateau = [path for path, s in named if isinstance(s, ReduceOnPlateauParamScheduler)]
    if plateau:
        raise CheckpointMismatchError(
            f'checkpoint {filename}: this config\'s parameter schedule differs from the one the checkpoint holds '
            f'({"; ".join(changes)}), and {plateau[0]} (ReduceOnPlateau) steps on the validation history, so where '
            f'the config\'s schedule stands at {position} cannot be worked out: resume with the schedule of the run '
            f'that saved it, or start from its weights only with --cfg-options load_from={filename} resume=False')
    # Replay the config's schedulers on stand-ins of their optimizers (one per optimizer, as they share it), from
    # the hyper-parameters the config built, then copy what they schedule into the real optimizers.
    real = {id(s): s.optimizer for _, s in named}
    stand_ins = {id(o): SimpleNamespace(param_groups=copy.deepcopy(config_state['groups'][id(o)]), step=_noop,
                                        _global_step=0) for o in real.values()}
    for (_, s), config in zip(named, config_state['states']):
        s.__dict__.clear()
        s.__dict__.update(_copy_state(config), optimizer=stand_ins[id(real[id(s)])])
    _replay([s for _, s in named], loop)
    values = {}
    for _, s in named:
        optimizer, s.optimizer = real[id(s)], real[id(s)]
        keys = scheduled_keys(s)
        for i, (group, replayed) in enumerate(zip(optimizer.param_groups, stand_ins[id(optimizer)].param_groups)):
            old = group.get(s.param_name)
            group.update({k: replayed[k] for k in keys if k in replayed})
            if i == 0:
                values.setdefault(s.param_name, (old, group.get(s.param_name)))
    if logger is not None:
        now = ', '.join(f'{name} {old:.4g} -> {new:.4g}' for name, (old, new) in values.items()
                        if isinstance(old, float) and isinstance(new, float))
        logger.warning(f'resuming {filename} with this config\'s parameter schedule, not the checkpoint\'s: '
                       f'{"; ".join(changes)}. The schedule goes on at {position} as if the run had used this '
                       f'config from its start ({now or "no value changes now"})')
