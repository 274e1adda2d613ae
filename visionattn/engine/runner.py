"""mmengine's Runner with what visionattn's tools need on top: atomic checkpoints, resume under torch's
``weights_only`` loading that survives a moved or copied work dir, a lock against two runs in one work dir, strict
and explained checkpoint loading, CPU data-parallel runs, and config checks."""
import bisect
import contextlib
import functools
import os
import os.path as osp
import re
import socket
import time
import traceback
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
from mmengine.dist import is_main_process
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop, Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from visionattn.hub import CheckpointError, CheckpointMismatchError, load_checkpoint_file

from .config_checks import ConfigError, check_batches

__all__ = ['VisionRunner', 'load_training_checkpoint', 'plain_checkpoint', 'restore_checkpoint',
           'find_resume_checkpoint', 'read_last_checkpoint', 'write_last_checkpoint', 'atomic_write_text',
           'lock_work_dir', 'WorkDirInUseError', 'check_config', 'load_tool_config']

TMP_SUFFIX = '.tmp'
LAST_CHECKPOINT = 'last_checkpoint'
LOCK_FILE = 'train.lock'
_STEP_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def _training_checkpoint_globals():
    """The classes an mmengine training checkpoint pickles besides tensors: numpy arrays and dtypes (history
    buffers, random states). Only these are allowed."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'uint32', 'bool')]
    return [np.ndarray, np.dtype, _reconstruct, scalar, *dtypes]


_BUFFER_TAG = '__mmengine_history_buffer__'
_ARRAY_TAG = '__numpy_array__'


def _plain_message_hub(checkpoint: Dict) -> None:
    """Replace the message hub's HistoryBuffers by plain dicts: pickled, they reference functions by getattr,
    which a weights_only load must refuse."""
    from mmengine.logging.history_buffer import HistoryBuffer
    scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
    for key, buffer in scalars.items():
        if isinstance(buffer, HistoryBuffer):
            log, count = buffer.data
            scalars[key] = {_BUFFER_TAG: True, 'log_history': log, 'count_history': count,
                            'max_length': buffer.max_length}


def _without_numpy(obj):
    """``obj`` with every numpy scalar made a Python number and every numpy array a tagged dict holding its bytes as
    a uint8 tensor (exact, whatever the dtype); containers are copied only where something inside changed, so a
    state dict (and its ``_metadata``) is passed through as it is. Object arrays are left alone."""
    import numpy as np
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            return obj
        raw = np.ascontiguousarray(obj).tobytes()
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
        return {_ARRAY_TAG: np.lib.format.dtype_to_descr(obj.dtype), 'shape': list(obj.shape), 'data': data}
    if isinstance(obj, dict):
        items = {k: _without_numpy(v) for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj
        out = obj.copy()
        out.update(items)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_without_numpy(v) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return items
        return type(obj)(*items) if hasattr(obj, '_fields') else tuple(items)  # a namedtuple keeps its type
    return obj


def _with_numpy(obj):
    """Undo :func:`_without_numpy`'s arrays (numbers stay Python numbers)."""
    import numpy as np
    if isinstance(obj, dict):
        if _ARRAY_TAG in obj:
            dtype = np.lib.format.descr_to_dtype(obj[_ARRAY_TAG])
            return np.frombuffer(obj['data'].numpy().tobytes(), dtype=dtype).reshape(obj['shape']).copy()
        for key, value in obj.items():
            restored = _with_numpy(value)
            if restored is not value:
                obj[key] = restored
        return obj
    if isinstance(obj, list):
        for i, value in enumerate(obj):
            obj[i] = _with_numpy(value)
        return obj
    if isinstance(obj, tuple):
        items = [_with_numpy(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, '_fields') else tuple(items)
    return obj


def plain_checkpoint(checkpoint: Dict) -> None:
    """Make what the engine is about to save plain data, in place: tensors, Python numbers, strings and containers.

    mmengine's message hub keeps its history in HistoryBuffers of numpy arrays and its ETA as a numpy float, and the
    random states hold numpy's generator state; pickled as they are, ``torch.load(weights_only=True)`` refuses the
    file, and with it timm and every other safe loader. :func:`load_training_checkpoint` restores them for resume.
    """
    _plain_message_hub(checkpoint)
    for key in list(checkpoint):
        checkpoint[key] = _without_numpy(checkpoint[key])


def restore_checkpoint(checkpoint: Dict) -> Dict:
    """Undo :func:`plain_checkpoint` in place (numpy arrays and HistoryBuffers back) and return the checkpoint."""
    _with_numpy(checkpoint)
    _restore_message_hub(checkpoint)
    return checkpoint


def _restore_message_hub(checkpoint: Dict) -> None:
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
    for key, value in scalars.items():
        # (a history read by the hub's loader, which skips numpy objects, stays a dict of placeholders)
        if isinstance(value, dict) and value.get(_BUFFER_TAG) and isinstance(value['log_history'], np.ndarray):
            scalars[key] = HistoryBuffer(value['log_history'], value['count_history'], value['max_length'])


def load_training_checkpoint(path: str, map_location='cpu') -> Dict:
    """Load a checkpoint that this engine wrote (to resume, or to test).

    torch's ``weights_only`` unpickler stays on. Checkpoints of this engine hold plain data only
    (:func:`plain_checkpoint`); for those of older visionattn versions, which pickled numpy arrays, the few plain-data
    numpy classes an mmengine training checkpoint holds are allowed (``_training_checkpoint_globals``), so a work dir
    never runs pickled code.
    """
    checkpoint = load_checkpoint_file(path, extra_globals=_training_checkpoint_globals(), map_location=map_location,
                                      skip_numpy=False)
    return restore_checkpoint(checkpoint)


def _fsync_file(path: Union[str, Path]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Union[str, Path]) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Replace ``path``'s content by ``text`` so that a reader (or a kill) sees the old content or the new, never a
    mix or an empty file: written to a temporary file, synced, renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_last_checkpoint(work_dir: Union[str, Path], checkpoint: Union[str, Path]) -> None:
    """Record ``checkpoint`` as the one to resume, atomically, relative to ``work_dir`` when it lies inside it (so the
    record stays right when the work dir is moved or copied)."""
    name = str(checkpoint)
    if '://' not in name:  # CheckpointHook(out_dir=...) may name a remote store
        work_dir, checkpoint = Path(work_dir).absolute(), Path(checkpoint).absolute()
        with contextlib.suppress(ValueError):  # outside the work dir: stays absolute
            name = str(checkpoint.relative_to(work_dir))
    atomic_write_text(work_dir / LAST_CHECKPOINT, name)


def read_last_checkpoint(work_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint that ``work_dir``'s ``last_checkpoint`` record names, if that file exists.

    A relative record is resolved against the work dir. An absolute one (written by mmengine or an older visionattn)
    is taken as the file of the same name in the work dir when that exists: after ``cp -r`` the record still names
    the original run's file, which that run may go on overwriting.
    """
    work_dir = Path(work_dir)
    record = work_dir / LAST_CHECKPOINT
    if not record.is_file():
        return None
    named = Path(record.read_text().strip())
    if not str(named) or str(named) == '.':
        return None
    if not named.is_absolute():
        named = work_dir / named
    elif (work_dir / named.name).is_file():
        named = work_dir / named.name
    return named if named.is_file() else None


def _recorded_iter(path: Path) -> Optional[int]:
    """The iteration a checkpoint records in its meta (None when it cannot be read)."""
    try:
        return int(load_training_checkpoint(str(path))['meta']['iter'])
    except Exception:  # noqa: BLE001  (a foreign or broken file is not a resume candidate)
        return None


def find_resume_checkpoint(work_dir: Union[str, Path]) -> Optional[str]:
    """The checkpoint to resume in ``work_dir``.

    The one the ``last_checkpoint`` record names (see :func:`read_last_checkpoint`) when it exists; else the latest
    of the ``*.pth`` files by progress: the N of ``epoch_N.pth`` / ``iter_N.pth``, or where the names do not say it
    alike, the iteration recorded in each file. Never the modification time, which ``cp -r`` rewrites; a run killed
    while writing leaves only a ``.tmp`` file, which is never picked.
    """
    work_dir = Path(work_dir)
    named = read_last_checkpoint(work_dir)
    if named is not None:
        return str(named)
    candidates: List[Path] = sorted(work_dir.glob('*.pth'))
    stepped = [(p, m) for p in candidates if (m := _STEP_NAME.match(p.name))]
    if len({m.group(1) for _, m in stepped}) == 1:
        return str(max(stepped, key=lambda pm: int(pm[1].group(2)))[0])
    # epoch_N and iter_N side by side, or other names (a custom filename_tmpl; best_* only when nothing else)
    progress = [(step, p) for p in ([p for p, _ in stepped] or candidates) if (step := _recorded_iter(p)) is not None]
    return str(max(progress, key=lambda sp: sp[0])[1]) if progress else None


class WorkDirInUseError(RuntimeError):
    """Another live process holds the work dir's lock."""


# The lock files this process holds. A process forked from it (a data-loader worker under the 'fork' start method)
# shares the open file, and with it the lock: killed, the run would stay locked until its workers notice and exit.
# The child closes its copy at once, so the lock goes with the process that took it.
_HELD_LOCKS: set = set()


def _drop_inherited_locks() -> None:
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def lock_work_dir(work_dir: Union[str, Path], enabled: bool = True) -> Iterator[None]:
    """Hold ``work_dir``'s lock (``train.lock`` in it) for the duration, or fail at once naming the holder.

    The lock is an ``fcntl.flock`` on the open file: the OS drops it when the holding process ends in any way
    (SIGKILL included), so a killed run never leaves a stale lock; processes forked from it (data-loader workers)
    close their copy of the file, so that they do not keep it after the run is killed. The file keeps the holder's
    pid and host for the message. In a distributed run only one process (rank 0) takes it: pass ``enabled=False`` on
    the others.

    Raises:
        WorkDirInUseError: A live process holds the lock.
    """
    if not enabled:
        yield
        return
    import fcntl
    work_dir = Path(work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(work_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors='replace').strip() or 'a process that has not written its pid yet'
        os.close(fd)
        raise WorkDirInUseError(f'work dir {work_dir} is in use by another training run ({holder}; lock file '
                                f'{work_dir / LOCK_FILE}): wait for it to end or stop it, or pass another --work-dir')
    _HELD_LOCKS.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}, started '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
        yield
    finally:
        if fd in _HELD_LOCKS:  # (not in a forked child, which closed its copy)
            _HELD_LOCKS.discard(fd)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _check_shapes(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Name the mismatched entries, with the num_classes hint for classifier heads."""
    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
    # integer or bool values (or a non-tensor) where the model holds floats would be cast in without a word
    wrong_kind = [(k, getattr(v, 'dtype', type(v).__name__), own[k].dtype) for k, v in state_dict.items()
                  if k in own and own[k].is_floating_point()
                  and not (isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()))]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if not (mismatched or wrong_kind or missing or unexpected):
        return
    lines = [f'checkpoint {path} does not fit the model:']
    lines += [f'  {k}: checkpoint {a}, model {b}' for k, a, b in mismatched]
    lines += [f'  {k}: checkpoint holds {a}, model {b}' for k, a, b in wrong_kind]
    heads = [(a, b) for k, a, b in mismatched if re.search(r'(head|fc|classifier)\.(\w+\.)*(weight|bias)$', k)]
    if heads:
        lines.append(f'  (the classifier has {heads[0][0][0]} classes in the checkpoint and {heads[0][1][0]} in the '
                     'config: set model.num_classes to match)')
    if missing:
        lines.append(f'  missing keys: {missing[:10]}{" ..." if len(missing) > 10 else ""}')
    if unexpected:
        lines.append(f'  unexpected keys: {unexpected[:10]}{" ..." if len(unexpected) > 10 else ""}')
    raise CheckpointMismatchError('\n'.join(lines))


def load_tool_config(config: str, cfg_options: Union[None, Dict, Sequence[str]] = None, work_dir: Optional[str] = None,
                     launcher: str = 'none'):
    """A config as tools/train.py and tools/test.py see it: ``--cfg-options`` (``KEY=VALUE`` strings or a dict)
    checked and merged, the work dir by mmdetection's precedence (--work-dir, else the config's, else
    ./work_dirs/<config name>), the launcher set, and gloo instead of NCCL where there is no GPU.

    Raises:
        ConfigError: A syntax or other error in the config or a base config it reads (naming the file and line), or
            a ``--cfg-options`` entry that is malformed, names a key the config does not have, or gives a value of
            another kind than the config's (naming the key); see :func:`~.config_checks.apply_cfg_options`.
    """
    from .config_checks import apply_cfg_options, read_config
    if not osp.isfile(config):
        raise SystemExit(f'config file {config} does not exist')
    cfg = read_config(config)
    cfg.launcher = launcher
    apply_cfg_options(cfg, cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    if launcher != 'none' and not torch.cuda.is_available():
        cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'  # NCCL needs GPUs
    return cfg


_CHECKED_WRAPPERS = ('OptimWrapper', 'AmpOptimWrapper', 'AGCOptimWrapper')


def _check_optim_wrappers(optim_wrapper) -> None:
    """The accumulation count and clipping of each optimizer wrapper mmengine builds (one, or one per name under
    a multi-optimizer constructor): mmengine checks neither, and a negative ``max_norm`` would reverse gradients. And
    the keys of ``paramwise_cfg``, which mmengine ignores when it does not know them."""
    from .optim import check_optim_wrapper_args, check_paramwise_cfg
    if not isinstance(optim_wrapper, dict):
        return
    check_paramwise_cfg(optim_wrapper)
    wrappers = [optim_wrapper] if 'optimizer' in optim_wrapper else \
        [w for w in optim_wrapper.values() if isinstance(w, dict) and 'optimizer' in w]
    for wrapper in wrappers:
        kind = wrapper.get('type', 'OptimWrapper')
        if getattr(kind, '__name__', kind) in _CHECKED_WRAPPERS:
            check_optim_wrapper_args(wrapper.get('accumulative_counts', 1), wrapper.get('clip_grad'))


def check_config(cfg, mode: Optional[str] = None) -> None:
    """Fail early, naming the problem, for what would otherwise fail late or silently.

    Args:
        cfg: The config, as :func:`load_tool_config` gives it.
        mode: 'train' or 'test' to check that the sections that mode needs are there too.
    """
    from .classification import check_model_name
    from .config_checks import (
        check_loaders_and_hooks,
        check_num_classes,
        check_paths,
        check_sections,
        check_train_cfg,
        check_types,
    )
    check_sections(cfg, mode)
    check_types(cfg)
    _check_optim_wrappers(cfg.get('optim_wrapper'))
    check_paths(cfg)
    check_train_cfg(cfg)
    check_loaders_and_hooks(cfg)
    model_cfg = cfg.get('model', {})
    if isinstance(model_cfg, dict) and 'backbone' in model_cfg and isinstance(model_cfg['backbone'], str):
        check_model_name(model_cfg['backbone'])
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset', {})
        root = dataset.get('data_root') if isinstance(dataset, dict) else None
        if root is not None and not osp.isdir(osp.expanduser(root)):
            raise FileNotFoundError(f'{loader}.dataset.data_root={root!r} does not exist')
    _check_ema_begin(cfg)
    check_num_classes(cfg)


def _check_ema_begin(cfg) -> None:
    """An EMAHook must start within the run: mmengine asserts it only once training starts, after the model and the
    data are built, and its message names neither the option nor the way out."""
    from mmengine.hooks import EMAHook
    train_cfg = cfg.get('train_cfg') or {}
    for i, hook in enumerate(cfg.get('custom_hooks') or []):
        kind = hook.get('type') if isinstance(hook, dict) else None
        if not (kind == 'EMAHook' or (isinstance(kind, type) and issubclass(kind, EMAHook))):
            continue
        for begin, limit in (('begin_epoch', 'max_epochs'), ('begin_iter', 'max_iters')):
            start, end = hook.get(begin, 0), train_cfg.get(limit)
            if end is not None and start > end:
                raise ValueError(
                    f'custom_hooks.{i}.{begin}={start} (EMAHook) is beyond train_cfg.{limit}={end}: the EMA would '
                    f'never start. Start it within the run with --cfg-options custom_hooks.{i}.{begin}=N, '
                    f'N <= {end} (0: from the start), or train longer')


def _run_rest_of_epoch(loop: EpochBasedTrainLoop, done: int) -> None:
    """``EpochBasedTrainLoop.run_epoch`` for the epoch a resume starts in: its first ``done`` batches (of the same
    order, the sampler being seeded by the epoch) are drawn but not trained. Once only: later epochs are whole."""
    del loop.run_epoch  # the class's own from the next epoch on
    runner = loop.runner
    runner.call_hook('before_train_epoch')
    runner.model.train()
    if done < len(loop.dataloader):
        # Starting the data iterator draws the workers' base seed from torch's generator, which an uninterrupted
        # run did at the start of the epoch, before the state the checkpoint holds: keep the training stream as it is.
        state = torch.get_rng_state()
        batches = iter(loop.dataloader)
        torch.set_rng_state(state)
        for idx, data_batch in enumerate(batches):
            if idx >= done:
                loop.run_iter(idx, data_batch)
    runner.call_hook('after_train_epoch')
    loop._epoch += 1


@contextlib.contextmanager
def _building(section: str) -> Iterator[None]:
    """A ValueError or TypeError raised while ``section`` of the config is built (a dataset's own argument check, a
    keyword the class does not take, torch's 'Invalid learning rate') becomes a ConfigError naming the section and
    where it was raised, which the tools print without a traceback, as they print check_config's refusals (it was
    a traceback of a few hundred lines ending in the message)."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        frame = traceback.extract_tb(error.__traceback__)[-1]
        raise ConfigError(f'{section} could not be built: {type(error).__name__}: {error} (raised at '
                          f'{frame.filename}:{frame.lineno})') from error


class VisionRunner(Runner):
    """mmengine's Runner with atomic checkpoint writes, resume under ``weights_only`` loading, strict loading of
    ``load_from`` checkpoints, and data-parallel runs on CPU processes (gloo)."""
    _validate_on_resume = False
    _validated_in_checkpoint = False
    _resumed_schedulers = None
    _resume_optimizer = True

    def save_checkpoint(self, out_dir, filename, file_client_args=None, save_optimizer=True,
                        save_param_scheduler=True, meta=None, by_epoch=True, backend_args=None):
        # Write to a temporary name, sync, then rename: a run killed mid-write (or a machine that loses power)
        # never leaves a truncated checkpoint under the final name. The meta records how the run steps through its
        # data, which a resume must match (_check_resume_fits).
        meta = {**(meta or {}), **self._data_facts()}
        super().save_checkpoint(out_dir, filename + TMP_SUFFIX, file_client_args, save_optimizer, save_param_scheduler,
                                meta, by_epoch, backend_args)
        if is_main_process():
            tmp = osp.join(out_dir, filename + TMP_SUFFIX)
            _fsync_file(tmp)
            os.replace(tmp, osp.join(out_dir, filename))
            _fsync_dir(out_dir)

    def _data_facts(self) -> Dict:
        """What a resumed run must share with the run that saved: images per step on each process, the process
        count and (for an epoch-based loop) the iterations of an epoch."""
        loop = self._train_loop
        if isinstance(loop, dict) or loop is None or not hasattr(loop, 'dataloader'):
            return {}
        loader = loop.dataloader
        batch_size = getattr(loader, 'batch_size', None) or getattr(getattr(loader, 'batch_sampler', None),
                                                                    'batch_size', None)
        facts = {'world_size': self.world_size}
        if isinstance(batch_size, int):
            facts['train_batch_size'] = batch_size
        if isinstance(loop, EpochBasedTrainLoop):
            with contextlib.suppress(TypeError):  # an iterable dataset has no length
                facts['epoch_length'] = len(loader)
        return facts

    def _check_resume_fits(self, checkpoint: Dict, filename: str) -> None:
        """Refuse to resume a checkpoint that cannot continue this run: one of weights only, one without the optimizer
        or scheduler state this run has (a ``save_best`` checkpoint: the schedule would start over), or one whose
        run stepped through the data otherwise than this config does (the iteration count, the schedule and, mid-epoch,
        the position in the epoch would silently mean other data)."""
        meta = checkpoint.get('meta')
        weights_only = f'start from its weights only with --cfg-options load_from={filename} resume=False'
        if not (isinstance(meta, dict) and isinstance(meta.get('epoch'), int) and isinstance(meta.get('iter'), int)):
            raise CheckpointError(f'checkpoint {filename} is not a training checkpoint of tools/train.py (it records '
                                  f'no epoch and iteration to go on from): {weights_only}')
        missing = [what for key, what, needed in (
            ('optimizer', 'optimizer state', self.optim_wrapper is not None),
            ('param_schedulers', 'learning-rate schedule', bool(self.param_schedulers)))
            if needed and key not in checkpoint]
        if missing:
            raise CheckpointError(
                f'checkpoint {filename} holds no {" and no ".join(missing)} (a best checkpoint, or one saved with '
                f'save_optimizer/save_param_scheduler off): resumed, they would start over at iteration '
                f'{meta["iter"]}. Resume from the latest epoch_N.pth / iter_N.pth, or {weights_only}')
        now = self._data_facts()
        way_out = (f'resume with the settings of the run that saved it, or start from its weights only with '
                   f'--cfg-options load_from={filename} resume=False')
        old_bs, old_ws = meta.get('train_batch_size'), meta.get('world_size')
        new_bs, new_ws = now.get('train_batch_size'), now.get('world_size')
        if None not in (old_bs, old_ws, new_bs, new_ws) and old_bs * old_ws != new_bs * new_ws:
            raise CheckpointMismatchError(
                f'checkpoint {filename} was saved by a run of {old_bs} images per step on each of {old_ws} '
                f'process(es) ({old_bs * old_ws} per step); this run has train_dataloader.batch_size={new_bs} on '
                f'{new_ws} ({new_bs * new_ws} per step), so its {meta.get("iter")} iterations and its schedule would '
                f'count other data: {way_out}')
        old_len, new_len = meta.get('epoch_length'), now.get('epoch_length')
        if old_len is not None and new_len is not None and old_len != new_len:
            raise CheckpointMismatchError(
                f'checkpoint {filename} was saved by a run of {old_len} iterations per epoch; this config has '
                f'{new_len} (the training set or its sampler differ), so its epochs, its schedule and its position in '
                f'the epoch would not match: {way_out}')

    def _continue_mid_epoch(self, filename: str) -> None:
        """An epoch-based loop resumed from a checkpoint saved within an epoch (a CheckpointHook with
        ``by_epoch=False``) goes on with the next batch of that epoch: mmengine's loop would start the epoch over and
        train its first batches twice, with more iterations in all than an uninterrupted run."""
        loop = self._train_loop
        if not isinstance(loop, EpochBasedTrainLoop):
            return
        try:
            length = len(loop.dataloader)
        except TypeError:
            return
        done = loop.iter - loop.epoch * length
        if done == 0:
            return
        if not 0 < done <= length:
            raise CheckpointMismatchError(
                f'checkpoint {filename} is at epoch {loop.epoch}, iteration {loop.iter}, which does not fit this '
                f'config\'s {length} iterations per epoch (the batch size, the process count or the training set '
                'differ from the run that saved it): resume with that run\'s settings, or start from its weights only '
                f'with --cfg-options load_from={filename} resume=False')
        if type(loop).run_epoch is not EpochBasedTrainLoop.run_epoch:
            raise CheckpointMismatchError(
                f'checkpoint {filename} was saved within epoch {loop.epoch + 1} ({done} of {length} iterations), and '
                f'{type(loop).__name__} has its own run_epoch, which cannot be resumed mid-epoch: resume from a '
                'checkpoint saved at the end of an epoch')
        self.logger.info(f'resuming within epoch {loop.epoch + 1}: skipping its {done} batches already trained')
        loop.run_epoch = functools.partial(_run_rest_of_epoch, loop, done)

    def _validation_was_due(self) -> bool:
        """Whether the loop validated right after the resumed checkpoint was saved. The validation of a step runs
        after its checkpoint is written, so its results (in the training curves, the best score and the best
        checkpoint of ``save_best``) are not in it."""
        loop = self._train_loop
        if self.val_loop is None or not hasattr(loop, 'val_begin') or not hasattr(loop, 'dynamic_milestones'):
            return False
        if isinstance(loop, EpochBasedTrainLoop):
            try:
                length = len(loop.dataloader)
            except TypeError:  # an iterable dataset: where the epoch stands is unknown
                return False
            if loop.iter != loop.epoch * length or not 0 < loop.epoch <= loop.max_epochs:
                return False  # within an epoch: its validation comes at the end of the epoch
            loop._decide_current_val_interval()  # what the loop does after the epoch, before validating
            step, total = loop.epoch, loop.max_epochs
        elif isinstance(loop, IterBasedTrainLoop):
            step, total = loop.iter, loop.max_iters
            if not 0 < step <= total:
                return False
            interval = loop.dynamic_intervals[bisect.bisect(loop.dynamic_milestones, step) - 1]
            return step >= loop.val_begin and (step % interval == 0 or step == total)
        else:
            return False
        return step >= loop.val_begin and (step % loop.val_interval == 0 or step == total)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        super().call_hook(fn_name, **kwargs)
        if fn_name == 'before_save_checkpoint':
            plain_checkpoint(kwargs['checkpoint'])
        elif fn_name == 'before_train' and self._validate_on_resume:
            self._validate_on_resume = False
            self.logger.info(f'validating the resumed checkpoint (step {self.iter}), as the interrupted run did '
                             'right after saving it')
            self.val_loop.run()

    def build_optim_wrapper(self, optim_wrapper):
        if isinstance(optim_wrapper, dict):  # (resume calls it again with the built wrapper)
            from .optim import check_custom_keys, check_paramwise_cfg
            check_paramwise_cfg(optim_wrapper)  # (again: a runner may be built without tools/train.py)
            check_custom_keys(self.model, optim_wrapper)
            with _building('optim_wrapper'):
                return super().build_optim_wrapper(optim_wrapper)
        return super().build_optim_wrapper(optim_wrapper)

    def build_param_scheduler(self, scheduler):
        with _building('param_scheduler'):
            return super().build_param_scheduler(scheduler)

    def register_hooks(self, default_hooks=None, custom_hooks=None):
        with _building('default_hooks / custom_hooks'):
            super().register_hooks(default_hooks, custom_hooks)

    def build_train_loop(self, loop):
        with _building('train_cfg / train_dataloader'):
            loop = super().build_train_loop(loop)
        check_batches(loop, 'train_dataloader')
        return loop

    def build_val_loop(self, loop):
        with _building('val_cfg / val_dataloader / val_evaluator'):
            loop = super().build_val_loop(loop)
        check_batches(loop, 'val_dataloader')
        return loop

    def build_test_loop(self, loop):
        with _building('test_cfg / test_dataloader / test_evaluator'):
            loop = super().build_test_loop(loop)
        check_batches(loop, 'test_dataloader')
        return loop

    def load_or_resume(self) -> None:
        if self._resume and self._load_from is None and not self._has_loaded:
            # mmengine trusts the last_checkpoint record even when the file it names is gone, reads it as an absolute
            # path and otherwise takes the newest file by modification time.
            self._load_from = find_resume_checkpoint(self.work_dir)
            if self._load_from is None:
                self.logger.info(f'no checkpoint in {self.work_dir}: training from the start')
                self._resume = False
        super().load_or_resume()
        self._warn_if_nothing_left()
        self._warn_if_schedule_overruns()

    def _warn_if_schedule_overruns(self) -> None:
        """A schedule that ends after the training loop (``--cfg-options train_cfg.max_epochs=1`` leaves each
        scheduler's end and T_max as they were) stops the run at a learning rate it was not meant to end on."""
        from .schedules import schedule_overruns
        loop = self._train_loop
        if isinstance(loop, (EpochBasedTrainLoop, IterBasedTrainLoop)):
            for message in schedule_overruns(self.param_schedulers, loop):
                self.logger.warning(message)

    def _warn_if_nothing_left(self) -> None:
        """A resumed run already at or past the configured length trains nothing and would exit without a word."""
        loop = self._train_loop
        # only a built training loop (in test and val runs it is still its config, a dict)
        if not self._has_loaded or isinstance(loop, dict) or (
                not hasattr(loop, 'max_epochs') and not hasattr(loop, 'max_iters')):
            return
        done, total, unit = (loop.epoch, loop.max_epochs, 'epoch') if hasattr(loop, 'max_epochs') else \
            (loop.iter, loop.max_iters, 'iteration')
        if done >= total:
            self.logger.warning(f'the checkpoint {self._load_from} is at {unit} {done} and the config trains '
                                f'{total} {unit}s: nothing is left to train (raise train_cfg.max_{unit}s to train '
                                'further)')

    def resume(self, filename, resume_optimizer=True, resume_param_scheduler=True, map_location='default'):
        from .schedules import apply_config_schedule, config_schedule_state
        config_schedule = config_schedule_state(getattr(self, 'param_schedulers', None)) \
            if resume_param_scheduler else None
        self._resume_optimizer = resume_optimizer  # (read by load_checkpoint)
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
            if config_schedule is not None and self._resumed_schedulers is not None:
                # mmengine restored the checkpoint's schedule whole, settings included (see apply_config_schedule)
                apply_config_schedule(self.param_schedulers, config_schedule, self._resumed_schedulers,
                                      self._train_loop, filename, self.logger)
            self._continue_mid_epoch(filename)
            self._validate_on_resume = not self._validated_in_checkpoint and self._validation_was_due()
        except ValueError as error:
            if 'parameter group' not in str(error):
                raise
            # torch's message names neither the checkpoint nor why: a config whose optimizer groups the
            # parameters differently (paramwise_cfg, a frozen part) from the run that saved it
            raise CheckpointMismatchError(
                f'checkpoint {filename}: its optimizer state does not fit the optimizer this config builds ({error}). '
                'The optimizer or its parameter-wise settings differ from the run that saved it: resume with that '
                'run\'s config, or start from its weights only with --cfg-options load_from=... and resume=False') \
                from error

    def load_checkpoint(self, filename, map_location='cpu', strict=True, revise_keys=((r'^module\.', ''),)):
        # Resumed and tested checkpoints are usually this engine's own: weights_only loading with the few
        # plain-data classes they hold allowed; anything else in a file is refused, and shapes are checked strictly.
        checkpoint = load_training_checkpoint(filename, map_location)
        if self._resume:
            self._check_resume_fits(checkpoint, filename)
            # re-saved after its validation (CheckpointHook does so when the best score improved): nothing to redo
            step = (checkpoint.get('meta') or {}).get('iter')
            self._validated_in_checkpoint = any(isinstance(row, dict) and row.get('iter') == step for row in
                                                (checkpoint.get('training_curves') or {}).get('val', ()))
            self._resumed_schedulers = checkpoint.get('param_schedulers')
            if self._resume_optimizer and 'optimizer' in checkpoint:
                # before mmengine loads the optimizer's state, param_groups included (see the function)
                from .optim import apply_config_optimizer_settings
                apply_config_optimizer_settings(self.optim_wrapper, self.param_schedulers, checkpoint['optimizer'],
                                                filename, self.logger)
        # The hooks see the weights as the model will take them: under 'state_dict' (a plain state dict is wrapped)
        # with the keys revised. EMAHook copies checkpoint['state_dict'] into its averaged model: a plain state dict
        # failed there with a bare KeyError, and 'module.'-prefixed keys loaded nothing into it (strict_load is off),
        # so a test ran on the EMA model's random initial weights without a word.
        wrapped = isinstance(checkpoint.get('state_dict'), dict)
        state = checkpoint['state_dict'] if wrapped else checkpoint
        for pattern, replacement in revise_keys:
            state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
        checkpoint = {**checkpoint, 'state_dict': state} if wrapped else {'state_dict': state}
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = checkpoint['state_dict']
        _check_shapes(model, state, filename)
        checkpoint = _load_checkpoint_to_model(model, {'state_dict': state, **{k: v for k, v in checkpoint.items()
                                                                              if k != 'state_dict'}}, strict=True)
        self._has_loaded = True
        self.logger.info(f'loaded checkpoint {filename}')
        return checkpoint

    def setup_env(self, env_cfg: Dict) -> None:
        if self.distributed and not torch.distributed.is_initialized() and not torch.cuda.is_available():
            # mmengine's init_dist calls torch.cuda.set_device even for gloo; on CPU processes start gloo here
            # from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
            if self.launcher != 'pytorch':
                raise RuntimeError(f'launcher {self.launcher!r} needs CUDA devices; on CPUs use torchrun '
                                   '(--launcher pytorch), which runs gloo')
            torch.distributed.init_process_group(backend='gloo')
        super().setup_env(env_cfg)

    def close_distributed(self) -> None:
        """Ends the process group once every rank is done. Left to interpreter exit, gloo's threads can be torn down
        while still joinable and abort one rank ("terminate called without an active exception") after a run that
        succeeded."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available() and not is_model_wrapper(model):
            # mmengine passes device_ids=[LOCAL_RANK], which DDP rejects for CPU modules.
            model = model.to('cpu')
            cfg = dict(model_wrapper_cfg or {})
            cfg.pop('type', None)
            cfg.setdefault('broadcast_buffers', False)
            cfg.setdefault('find_unused_parameters', self.cfg.get('find_unused_parameters', False))
            return MMDistributedDataParallel(module=model, device_ids=None, **cfg)
        return super().wrap_model(model_wrapper_cfg, model)
