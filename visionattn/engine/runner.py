"""mmengine's Runner with what visionattn's tools need on top: atomic checkpoints, resume under torch's
``weights_only`` loading that survives a moved or copied work dir, a lock against two runs in one work dir, strict
and explained checkpoint loading, CPU data-parallel runs, and config checks."""
import contextlib
import os
import os.path as osp
import re
import socket
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

import torch
from mmengine.dist import is_main_process
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from visionattn.hub import CheckpointMismatchError, load_checkpoint_file

__all__ = ['VisionRunner', 'load_training_checkpoint', 'find_resume_checkpoint', 'read_last_checkpoint',
           'write_last_checkpoint', 'atomic_write_text', 'lock_work_dir', 'WorkDirInUseError', 'check_config',
           'load_tool_config']

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


def _restore_message_hub(checkpoint: Dict) -> None:
    from mmengine.logging.history_buffer import HistoryBuffer
    scalars = checkpoint.get('message_hub', {}).get('log_scalars', {})
    for key, value in scalars.items():
        if isinstance(value, dict) and value.get(_BUFFER_TAG):
            scalars[key] = HistoryBuffer(value['log_history'], value['count_history'], value['max_length'])


def load_training_checkpoint(path: str, map_location='cpu') -> Dict:
    """Load a checkpoint that this engine wrote (to resume, or to test).

    torch's ``weights_only`` unpickler stays on; besides tensors only the few plain-data classes that an mmengine
    training checkpoint holds are allowed (``_training_checkpoint_globals``), so a work dir never runs pickled code.
    """
    checkpoint = load_checkpoint_file(path, extra_globals=_training_checkpoint_globals(), map_location=map_location)
    _restore_message_hub(checkpoint)
    return checkpoint


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


@contextlib.contextmanager
def lock_work_dir(work_dir: Union[str, Path], enabled: bool = True) -> Iterator[None]:
    """Hold ``work_dir``'s lock (``train.lock`` in it) for the duration, or fail at once naming the holder.

    The lock is an ``fcntl.flock`` on the open file: the OS drops it when the holding process ends in any way
    (SIGKILL included), so a killed run never leaves a stale lock. The file keeps the holder's pid and host for the
    message. In a distributed run only one process (rank 0) takes it: pass ``enabled=False`` on the others.

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
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on host {socket.gethostname()}, started '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode())
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _check_shapes(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Name the mismatched entries, with the num_classes hint for classifier heads."""
    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and hasattr(v, 'shape') and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if not (mismatched or missing or unexpected):
        return
    lines = [f'checkpoint {path} does not fit the model:']
    lines += [f'  {k}: checkpoint {a}, model {b}' for k, a, b in mismatched]
    heads = [(a, b) for k, a, b in mismatched if re.search(r'(head|fc|classifier)\.(\w+\.)*(weight|bias)$', k)]
    if heads:
        lines.append(f'  (the classifier has {heads[0][0][0]} classes in the checkpoint and {heads[0][1][0]} in the '
                     'config: set model.num_classes to match)')
    if missing:
        lines.append(f'  missing keys: {missing[:10]}{" ..." if len(missing) > 10 else ""}')
    if unexpected:
        lines.append(f'  unexpected keys: {unexpected[:10]}{" ..." if len(unexpected) > 10 else ""}')
    raise CheckpointMismatchError('\n'.join(lines))


def load_tool_config(config: str, cfg_options: Optional[Dict] = None, work_dir: Optional[str] = None,
                     launcher: str = 'none'):
    """A config as tools/train.py and tools/test.py see it: ``--cfg-options`` merged, the work dir by
    mmdetection's precedence (--work-dir, else the config's, else ./work_dirs/<config name>), the launcher set, and
    gloo instead of NCCL where there is no GPU."""
    from mmengine.config import Config
    if not osp.isfile(config):
        raise SystemExit(f'config file {config} does not exist')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    if launcher != 'none' and not torch.cuda.is_available():
        cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'  # NCCL needs GPUs
    return cfg


def check_config(cfg) -> None:
    """Fail early, naming the problem, for what would otherwise fail late or silently."""
    from .classification import check_model_name
    model_cfg = cfg.get('model', {})
    if isinstance(model_cfg, dict) and 'backbone' in model_cfg and isinstance(model_cfg['backbone'], str):
        check_model_name(model_cfg['backbone'])
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset', {})
        root = dataset.get('data_root') if isinstance(dataset, dict) else None
        if root is not None and not osp.isdir(osp.expanduser(root)):
            raise FileNotFoundError(f'{loader}.dataset.data_root={root!r} does not exist')


class VisionRunner(Runner):
    """mmengine's Runner with atomic checkpoint writes, resume under ``weights_only`` loading, strict loading of
    ``load_from`` checkpoints, and data-parallel runs on CPU processes (gloo)."""

    def save_checkpoint(self, out_dir, filename, *args, **kwargs):
        # Write to a temporary name, sync, then rename: a run killed mid-write (or a machine that loses power)
        # never leaves a truncated checkpoint under the final name.
        super().save_checkpoint(out_dir, filename + TMP_SUFFIX, *args, **kwargs)
        if is_main_process():
            tmp = osp.join(out_dir, filename + TMP_SUFFIX)
            _fsync_file(tmp)
            os.replace(tmp, osp.join(out_dir, filename))
            _fsync_dir(out_dir)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        super().call_hook(fn_name, **kwargs)
        if fn_name == 'before_save_checkpoint':
            _plain_message_hub(kwargs['checkpoint'])

    def load_or_resume(self) -> None:
        if self._resume and self._load_from is None and not self._has_loaded:
            # mmengine trusts the last_checkpoint record even when the file it names is gone, reads it as an absolute
            # path and otherwise takes the newest file by modification time.
            self._load_from = find_resume_checkpoint(self.work_dir)
            if self._load_from is None:
                self.logger.info(f'no checkpoint in {self.work_dir}: training from the start')
                self._resume = False
        return super().load_or_resume()

    def load_checkpoint(self, filename, map_location='cpu', strict=True, revise_keys=((r'^module\.', ''),)):
        # Resumed and tested checkpoints are usually this engine's own: weights_only loading with the few
        # plain-data classes they hold allowed; anything else in a file is refused, and shapes are checked strictly.
        checkpoint = load_training_checkpoint(filename, map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        state = checkpoint.get('state_dict', checkpoint)
        for pattern, replacement in revise_keys:
            state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
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
