"""Hooks for crash-safe checkpoints, reproducible resumption, readable progress and the training-curve plot."""
import json
import numbers
import os.path as osp
import random
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import IterBasedTrainLoop

from .registry import HOOKS
from .runner import write_last_checkpoint

__all__ = ['SafeCheckpointHook', 'RandomStateHook', 'DatasetEpochHook', 'ProgressBarHook', 'TrainingCurveHook',
           'ShowDirHook', 'PredictionImagesHook']


def _rng_state() -> Dict:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    # A resumed checkpoint is mapped to the GPU, but the generators take their state as a CPU ByteTensor.
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'].cpu())


def _scalar(value) -> float:
    """A logged value as a float; a loss that still carries its graph is detached first (float() of a tensor that
    requires grad warns)."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _finite_or_none(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON's null)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def _remove_checkpoint(backend, path: str) -> None:
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):  # checkpoints saved by deepspeed are directories
        backend.rmtree(path)


class _DeferredRemoval:
    """A file backend that records removals instead of doing them (everything else goes to the real one)."""

    def __init__(self, backend):
        self.backend = backend
        self.removed: List[str] = []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def remove(self, path) -> None:
        self.removed.append(str(path))

    def rmtree(self, path) -> None:
        self.removed.append(str(path))


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's CheckpointHook, made safe against a kill at any point of a save, and at home in a moved or copied
    work dir. Takes CheckpointHook's arguments.

    mmengine deletes the oldest checkpoint (and the previous best) *before* writing the new one, so with
    ``max_keep_ckpts=1`` a kill during the write leaves nothing to resume. Here a save goes: the new checkpoint to a
    temporary file, synced and renamed into place (:meth:`VisionRunner.save_checkpoint`), then ``last_checkpoint``
    rewritten atomically and relative to the work dir, and only then the old checkpoints deleted. A kill at any point
    leaves a complete checkpoint that ``last_checkpoint`` (or, failing it, the progress in the file names) leads to.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        keep = self.max_keep_ckpts
        # mmengine takes any value here and fails at the start of training with "TypeError: an integer is required"
        if not isinstance(keep, numbers.Integral) or isinstance(keep, bool):
            raise ValueError(f'default_hooks.checkpoint.max_keep_ckpts must be a whole number (the checkpoints to '
                             f'keep; -1: every one), got {keep!r}')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and osp.isdir(self.out_dir):
            # What a run killed mid-write left; the work dir lock (tools/train.py) keeps other runs away.
            for partial in sorted(p for p in Path(self.out_dir).glob('*.pth.tmp') if p.is_file()):
                runner.logger.info(f'removing {partial}, the incomplete save of a killed run')
                partial.unlink()
        # A resumed message hub holds the best checkpoints' absolute paths from where the run was: in a copied work
        # dir they name the original's files, which a new best would delete.
        if getattr(self, 'best_ckpt_path', None):
            self.best_ckpt_path = self._in_out_dir(self.best_ckpt_path)
            runner.message_hub.update_info('best_ckpt', self.best_ckpt_path)
        for key, path in (getattr(self, 'best_ckpt_path_dict', None) or {}).items():
            if path:
                self.best_ckpt_path_dict[key] = self._in_out_dir(path)
                runner.message_hub.update_info(f'best_ckpt_{key}', self.best_ckpt_path_dict[key])

    def _in_out_dir(self, path: str) -> str:
        return self.file_backend.join_path(self.out_dir, osp.basename(str(path).rstrip('/')))

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        stale = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            # _save_checkpoint and _save_best_checkpoint may both save this step
            while len(self.keep_ckpt_ids) >= self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            # The new checkpoint still lists the old ones it replaces: killed before they are deleted, the resumed
            # run deletes them (CheckpointHook.before_train trims the list to max_keep_ckpts).
            runner.message_hub.update_info('keep_ckpt_ids', [*stale, *self.keep_ckpt_ids])
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(self.out_dir, ckpt_filename, self.file_client_args, save_optimizer=self.save_optimizer,
                               save_param_scheduler=self.save_param_scheduler, meta=meta, by_epoch=self.by_epoch,
                               backend_args=self.backend_args, **self.args)
        if self.max_keep_ckpts > 0:
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        if not is_main_process():
            return
        write_last_checkpoint(runner.work_dir, self.last_ckpt)
        for old in stale:  # only now that the new checkpoint is complete and recorded
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if path != self.last_ckpt:
                _remove_checkpoint(self.file_backend, path)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # A save_best key the evaluator does not report failed as a bare KeyError: 'accuracy' from mmengine, after the
        # first training epoch; name the keys it does report.
        missing = [k for k in (self.key_indicators if self.save_best else ()) if k != 'auto' and k not in metrics]
        if missing:
            from .config_checks import ConfigError
            from .optim import _close
            raise ConfigError(
                f'default_hooks.checkpoint.save_best={missing[0]!r} is not a metric the val_evaluator reports'
                f'{_close(missing[0], list(metrics))}; it reports {", ".join(map(str, metrics))}. Set save_best to one '
                f'of them (or \'auto\': the first); the checkpoints saved so far are kept, resume from the latest')
        # mmengine removes the previous best before writing the new one: defer its removals until the new best
        # (and the re-saved latest checkpoint) are in place.
        backend = self.file_backend
        self.file_backend = deferred = _DeferredRemoval(backend)
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        keep = {self.last_ckpt, getattr(self, 'best_ckpt_path', None),
                *(getattr(self, 'best_ckpt_path_dict', None) or {}).values()}
        for path in deferred.removed:
            if path not in keep:
                _remove_checkpoint(backend, path)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Makes a resumed run draw the same random numbers as an uninterrupted one.

    mmengine's checkpoints hold the model, optimizer, schedulers and (with EMAHook) the EMA weights, not the
    random generators. This hook gathers every process's generator states when a checkpoint is due and stores
    them in it; resuming restores each process's own. Validation runs between a checkpoint and the next epoch,
    so it runs on a forked state and leaves the training stream untouched.
    """
    priority = 'ABOVE_NORMAL'  # before CheckpointHook (VERY_LOW) in the same after_train_* call

    def __init__(self):
        self._states: Optional[List[Dict]] = None
        self._saved_for_val: Optional[Dict] = None
        self._checkpoint_hook: Optional[CheckpointHook] = None

    def before_train(self, runner) -> None:
        self._checkpoint_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

    def _gather(self) -> None:
        self._states = all_gather_object(_rng_state()) if get_world_size() > 1 else [_rng_state()]

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        hook = self._checkpoint_hook
        if hook is not None and not hook.by_epoch and self.every_n_train_iters(runner, hook.interval):
            self._gather()

    def after_train_epoch(self, runner) -> None:
        self._gather()

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        checkpoint['rng_states'] = self._states if self._states is not None else [_rng_state()]

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        states = checkpoint.get('rng_states')
        if not runner._resume or not states:
            return
        if len(states) != get_world_size():
            runner.logger.warning(f'the checkpoint holds random states of {len(states)} processes, this run has '
                                  f'{get_world_size()}: every process starts from the first one')
        _set_rng_state(states[get_rank()] if len(states) == get_world_size() else states[0])

    def before_val(self, runner) -> None:
        self._saved_for_val = _rng_state()

    def after_val(self, runner) -> None:
        if self._saved_for_val is not None:
            _set_rng_state(self._saved_for_val)
            self._saved_for_val = None


@HOOKS.register_module()
class DatasetEpochHook(Hook):
    """Tells the training dataset the epoch, on which its per-sample augmentation seeds depend."""

    def before_train_epoch(self, runner) -> None:
        dataset = runner.train_dataloader.dataset
        if hasattr(dataset, 'set_epoch'):
            dataset.set_epoch(runner.epoch)


@HOOKS.register_module()
class ProgressBarHook(Hook):
    """A tqdm bar over each training epoch and each evaluation, on the main process, on a terminal: redirected to a
    file, a bar's hundreds of carriage-return refreshes would run into one long line among the logger's lines,
    which already report progress there."""
    priority = 'BELOW_NORMAL'

    def __init__(self):
        self._bar = None

    def _open(self, total: int, desc: str) -> None:
        if is_main_process():
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit='it', leave=False, dynamic_ncols=True,
                             disable=None)  # None: off where stderr is not a terminal

    def _step(self, outputs=None) -> None:
        if self._bar is not None and not self._bar.disable:
            if isinstance(outputs, dict) and 'loss' in outputs:
                self._bar.set_postfix(loss=f'{_scalar(outputs["loss"]):.4f}', refresh=False)
            self._bar.update()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def before_train_epoch(self, runner) -> None:
        if isinstance(runner.train_loop, IterBasedTrainLoop):  # one "epoch" holds the whole run
            self._open(runner.max_iters - runner.iter, f'iter {runner.iter + 1}-{runner.max_iters}')
        else:
            self._open(len(runner.train_dataloader), f'epoch {runner.epoch + 1}/{runner.max_epochs}')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step(outputs)

    def after_train_epoch(self, runner) -> None:
        self._close()

    def before_val_epoch(self, runner) -> None:
        self._open(len(runner.val_dataloader), 'val')

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._close()

    def before_test_epoch(self, runner) -> None:
        self._open(len(runner.test_dataloader), 'test')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self._step()

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._close()


@HOOKS.register_module()
class TrainingCurveHook(Hook):
    """Plots training loss, learning rate and validation metrics to ``<work_dir>/training_curves.png``.

    The history travels in the checkpoints, so the plot of a resumed run covers the whole run. The same numbers
    go to ``<work_dir>/training_curves.json``.

    Args:
        interval: Record the training loss and lr every this many iterations.
        filename: Name of the PNG in the work dir.
    """
    priority = 'LOW'

    def __init__(self, interval: int = 1, filename: str = 'training_curves.png'):
        self.interval = interval
        self.filename = filename
        self.history: Dict[str, List] = {'train': [], 'val': []}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        # (and the run's last iteration: with an interval longer than the run, nothing was recorded, and neither the
        # PNG nor the JSON written, validation results included)
        if outputs and (self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner)):
            lr = runner.optim_wrapper.get_lr()
            lr = next(iter(lr.values()))[0] if isinstance(lr, dict) else lr
            self.history['train'].append({'iter': runner.iter + 1, 'epoch': runner.epoch + 1,
                                          'loss': _scalar(outputs['loss']), 'lr': float(lr)})

    def after_val_epoch(self, runner, metrics=None) -> None:
        if metrics:
            # a resumed run validates its checkpoint again (VisionRunner): once per step in the history
            self.history['val'] = [row for row in self.history['val'] if row['iter'] != runner.iter]
            self.history['val'].append({'iter': runner.iter, 'epoch': runner.epoch,
                                        **{k: float(v) for k, v in metrics.items()}})
            self._plot(runner)

    def after_train(self, runner) -> None:
        self._plot(runner)

    def before_save_checkpoint(self, runner, checkpoint: Dict) -> None:
        checkpoint['training_curves'] = self.history

    def after_load_checkpoint(self, runner, checkpoint: Dict) -> None:
        if runner._resume and 'training_curves' in checkpoint:
            self.history = checkpoint['training_curves']

    def _plot(self, runner) -> None:
        if not is_main_process() or not self.history['train']:
            return
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        work_dir = Path(runner.work_dir)
        # strict JSON: a NaN or infinite loss or metric is null (json.dumps writes NaN / Infinity, which JSON has not:
        # jq, JavaScript and most JSON readers other than Python's refuse the whole file)
        (work_dir / Path(self.filename).with_suffix('.json').name).write_text(
            json.dumps(_finite_or_none(self.history), allow_nan=False))
        train, val = self.history['train'], self.history['val']
        # COCOeval reports -1 for an area range without objects: such a metric says nothing and squashes the axis.
        metric_keys = sorted({k for row in val for k in row if k not in ('iter', 'epoch')
                              and any(r.get(k, -1) != -1 for r in val)})
        fig, axes = plt.subplots(1, 2 + bool(metric_keys), figsize=(5 * (2 + bool(metric_keys)), 3.6))
        iters = [row['iter'] for row in train]
        axes[0].plot(iters, [row['loss'] for row in train], lw=0.8)
        axes[0].set(title='training loss', xlabel='iteration')
        axes[1].plot(iters, [row['lr'] for row in train])
        axes[1].set(title='learning rate', xlabel='iteration')
        for key in metric_keys:
            axes[2].plot([row['iter'] for row in val if key in row], [row[key] for row in val if key in row],
                         marker='o', label=key)
        if metric_keys:
            axes[2].set(title='validation', xlabel='iteration')
            axes[2].legend()
        fig.suptitle(Path(runner.cfg.filename or runner.experiment_name).stem)
        fig.tight_layout()
        fig.savefig(work_dir / self.filename, dpi=110)
        plt.close(fig)


class ShowDirHook(Hook):
    """Base of the hooks that draw test predictions for ``tools/test.py --show-dir``: on the main process, saves
    ``draw``'s picture of each of the first ``max_images`` test samples to ``out_dir/<count>_<name>.png``, and at the
    end of the test the first ``overview`` of them side by side in one picture, ``out_dir/overview.png`` (what a
    reader looks at first; one file to copy off a remote machine).

    Args:
        out_dir: Folder to write PNGs to.
        max_images: Stop after this many images.
        overview: Pictures in the overview (0: none).
    """
    OVERVIEW = 'overview.png'
    DRAWING_GLOB = '[0-9][0-9][0-9][0-9][0-9]_*.png'  # the names below: tools/test.py clears an earlier test's
    OVERVIEW_WIDTH = 1600  # pixels: as many columns as fit, at least one

    def __init__(self, out_dir: str, max_images: int = 64, overview: int = 16):
        self.out_dir = Path(out_dir)
        self.max_images = max_images
        self.overview = overview
        self._written = 0
        self._sheet = []

    def draw(self, runner, image: Optional[torch.Tensor], sample):
        """The picture of one sample (a uint8 [H, W, 3] array or a PIL image) and its file name's suffix;
        ``image`` is the batch's input for the sample (None where the batch is not given)."""
        raise NotImplementedError

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not is_main_process() or self._written >= self.max_images or not outputs:
            return
        from PIL import Image
        self.out_dir.mkdir(parents=True, exist_ok=True)
        inputs = data_batch['inputs'] if data_batch is not None else [None] * len(outputs)
        for image, sample in zip(inputs, outputs):
            if self._written >= self.max_images:
                break
            picture, name = self.draw(runner, image, sample)
            picture = Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture
            picture.save(self.out_dir / f'{self._written:05d}_{name}.png')
            if len(self._sheet) < self.overview:
                self._sheet.append(picture.convert('RGB'))
            self._written += 1

    def after_test_epoch(self, runner, metrics=None) -> None:
        if not is_main_process() or not self._sheet:
            return
        from PIL import Image
        gap = 4
        width, height = max(p.width for p in self._sheet), max(p.height for p in self._sheet)
        columns = max(1, min(len(self._sheet), (self.OVERVIEW_WIDTH + gap) // (width + gap)))
        rows = -(-len(self._sheet) // columns)
        sheet = Image.new('RGB', (columns * (width + gap) - gap, rows * (height + gap) - gap), 'white')
        for i, picture in enumerate(self._sheet):
            sheet.paste(picture, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
        sheet.save(self.out_dir / self.OVERVIEW)
        self._sheet = []


@HOOKS.register_module()
class PredictionImagesHook(ShowDirHook):
    """Saves test images annotated with predicted and true labels to ``out_dir`` (tools/test.py --show-dir).

    Args:
        out_dir: Folder to write PNGs to.
        max_images: Stop after this many images.
    """

    def draw(self, runner, image, sample):
        from PIL import Image, ImageDraw
        classes = runner.test_dataloader.dataset.metainfo.get('classes', ())
        name = (lambda i: classes[i] if i < len(classes) else str(i))  # noqa: E731
        pred, true = int(sample.pred_label), int(sample.gt_label)
        canvas = Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).resize((160, 160), Image.NEAREST)
        framed = Image.new('RGB', (160, 184), 'white')
        framed.paste(canvas, (0, 24))
        ImageDraw.Draw(framed).text((4, 4), f'pred {name(pred)} / true {name(true)}',
                                    fill='green' if pred == true else 'red')
        return framed, f'pred-{pred}_true-{true}'
