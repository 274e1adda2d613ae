"""Nothing lost, nothing mixed up in a work dir (issue 21, items 1-3): a kill at any point of a checkpoint save leaves
a run that resumes from its last complete checkpoint, also with ``max_keep_ckpts=1``; a moved or copied work dir
resumes from its latest checkpoint, never the newest by modification time; and a second tools/train.py on a work dir
in use refuses, naming the other process, with a lock that a killed run does not leave behind."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import load_tool
from test_train import MAMBAOUT_DIGITS, ROOT, SMALL, _env, _run, _train

pytest.importorskip('mmengine')

pytestmark = pytest.mark.tools

# mambaout_femto on 32 digits in batches of 16: two iterations an epoch, a checkpoint after each epoch.
TINY = ['train_dataloader.dataset.max_samples=32', 'val_dataloader.dataset.max_samples=16']

KILLED_IN_SAVE = textwrap.dedent('''
    import importlib.util, os, sys
    from mmengine.fileio.backends import LocalBackend
    import visionattn.engine.hooks as hooks

    point, target = os.environ['KILL_POINT'], os.environ['KILL_IN_SAVE_OF']
    put = LocalBackend.put
    record, remove = getattr(hooks, 'write_last_checkpoint', None), getattr(hooks, '_remove_checkpoint', None)

    def put_half_then_die(self, obj, filepath):  # the bytes of the checkpoint file, cut off mid-write
        if point == 'write' and os.path.basename(str(filepath)).startswith(target):
            with open(filepath, 'wb') as f:
                f.write(obj[:len(obj) // 2])
                f.flush()
            os._exit(137)
        put(self, obj, filepath)

    def record_or_die(work_dir, checkpoint):  # the checkpoint is complete, last_checkpoint not yet updated
        if point == 'record' and os.path.basename(str(checkpoint)) == target:
            os._exit(137)
        record(work_dir, checkpoint)

    def remove_or_die(backend, path):  # the new checkpoint is recorded, the old one not yet deleted
        if point == 'delete':
            os._exit(137)
        remove(backend, path)

    LocalBackend.put = put_half_then_die
    if record is not None:
        hooks.write_last_checkpoint, hooks._remove_checkpoint = record_or_die, remove_or_die
    spec = importlib.util.spec_from_file_location('train_tool', 'tools/train.py')
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    train_tool.main(sys.argv[1:])
''')


# The case (a kill while the file is written) runs in the default suite; the other kill points (each ~40 s of
# two tools/train.py processes on CI's 2 cores) under `slow`.
@pytest.mark.parametrize('point,resumed_epoch', [
    ('write', 1), pytest.param('record', 1, marks=pytest.mark.slow), pytest.param('delete', 2, marks=pytest.mark.slow)])
def test_kill_during_save_keeps_the_last_complete_checkpoint(tmp_path, point, resumed_epoch):
    options = [*TINY, 'train_cfg.max_epochs=3', 'default_hooks.checkpoint.max_keep_ckpts=1']
    script = tmp_path / 'killed_in_save.py'
    script.write_text(KILLED_IN_SAVE)
    work = tmp_path / 'run'
    env = dict(_env(), KILL_POINT=point, KILL_IN_SAVE_OF='epoch_2.pth')
    proc = subprocess.run([sys.executable, str(script), MAMBAOUT_DIGITS, '--work-dir', str(work), '--cfg-options',
                           *SMALL, *options], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 137, proc.stderr[-3000:]
    assert (work / f'epoch_{resumed_epoch}.pth').is_file(), sorted(p.name for p in work.iterdir())
    proc = _train(MAMBAOUT_DIGITS, work, *options, resume=True)
    log = proc.stdout + proc.stderr
    assert f'resumed epoch: {resumed_epoch}, iter: {2 * resumed_epoch}' in log, log[-3000:]
    assert sorted(p.name for p in work.glob('*.pth')) == ['epoch_3.pth']
    assert (work / 'last_checkpoint').read_text() == 'epoch_3.pth'
    assert not list(work.glob('*.tmp'))


def test_moved_work_dir_resumes_its_latest_checkpoint(tmp_path):
    options = [*TINY, 'default_hooks.checkpoint.max_keep_ckpts=3']
    work = tmp_path / 'run'
    _train(MAMBAOUT_DIGITS, work, *options, 'train_cfg.max_epochs=2')
    moved = tmp_path / 'moved'
    shutil.move(work, moved)
    future = time.time() + 60  # as after `cp -r`: the oldest checkpoint has the newest modification time
    os.utime(moved / 'epoch_1.pth', (future, future))
    proc = _train(MAMBAOUT_DIGITS, moved, *options, 'train_cfg.max_epochs=3', resume=True)
    assert 'resumed epoch: 2, iter: 4' in proc.stdout + proc.stderr
    assert sorted(p.name for p in moved.glob('*.pth')) == ['epoch_1.pth', 'epoch_2.pth', 'epoch_3.pth']
    assert (moved / 'last_checkpoint').read_text() == 'epoch_3.pth'  # relative to the work dir


def test_resume_discovery_goes_by_progress_and_stays_in_the_work_dir(tmp_path, monkeypatch):
    from visionattn.engine import find_resume_checkpoint
    work = tmp_path / 'run'
    work.mkdir()
    for epoch in (1, 2, 10):
        (work / f'epoch_{epoch}.pth').write_bytes(b'x')
    future = time.time() + 60
    os.utime(work / 'epoch_1.pth', (future, future))
    # No record: the highest epoch, not the newest file nor the last name in sorted order.
    assert find_resume_checkpoint(work) == str(work / 'epoch_10.pth')
    # A relative record is read against the work dir, wherever the process runs.
    (work / 'last_checkpoint').write_text('epoch_2.pth')
    monkeypatch.chdir(tmp_path)
    assert find_resume_checkpoint(work) == str(work / 'epoch_2.pth')
    # An absolute record in a copy (mmengine's, or an older visionattn's) names the original run's file, which
    # still exists: the copy resumes from its own file of that name.
    copy = tmp_path / 'copy'
    shutil.copytree(work, copy)
    (copy / 'last_checkpoint').write_text(str(work / 'epoch_2.pth'))
    assert find_resume_checkpoint(copy) == str(copy / 'epoch_2.pth')
    # A record naming a file that is gone falls back to progress.
    (copy / 'last_checkpoint').write_text(str(tmp_path / 'gone' / 'epoch_11.pth'))
    assert find_resume_checkpoint(copy) == str(copy / 'epoch_10.pth')


HOLDER = 'import sys, time\nfrom visionattn.engine import lock_work_dir\nwith lock_work_dir(sys.argv[1]):\n' \
         '    print("locked", flush=True)\n    time.sleep(600)\n'


def test_second_run_on_a_work_dir_in_use_refuses_and_a_killed_run_leaves_no_lock(tmp_path):
    from visionattn.engine import WorkDirInUseError, lock_work_dir
    work = tmp_path / 'run'
    holder = subprocess.Popen([sys.executable, '-c', HOLDER, str(work)], cwd=ROOT, env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        proc = _run([sys.executable, 'tools/train.py', MAMBAOUT_DIGITS, '--work-dir', str(work), '--cfg-options',
                     *SMALL, *TINY, 'train_cfg.max_epochs=1'], expect_ok=False)
        assert proc.returncode != 0
        assert f'work dir {work} is in use by another training run (pid {holder.pid} ' in proc.stderr, proc.stderr
        assert not list(work.glob('*.pth')) and not list(work.glob('2*')), 'the refused run wrote into the work dir'
        with pytest.raises(WorkDirInUseError, match=f'pid {holder.pid} '):
            with lock_work_dir(work):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up: the OS drops the lock with the process
        holder.wait()
    with lock_work_dir(work):
        pass


KILLED_WITH_A_WORKER = textwrap.dedent('''
    import os, signal, sys, time
    from visionattn.engine import lock_work_dir
    with lock_work_dir(sys.argv[1]):
        if os.fork() == 0:  # a data-loader worker ('fork' start method): outlives its parent by a few seconds
            time.sleep(5)
            os._exit(0)
        os.kill(os.getpid(), signal.SIGKILL)
''')


def test_a_killed_run_s_forked_workers_do_not_keep_the_lock(tmp_path):
    # Adversarial probe: the data-loader workers forked by a run shared its lock file, so right after the run was
    # killed a restart was refused as "in use" by the dead pid until the workers noticed and exited.
    from visionattn.engine import lock_work_dir
    work = tmp_path / 'run'
    proc = subprocess.run([sys.executable, '-c', KILLED_WITH_A_WORKER, str(work)], cwd=ROOT, env=_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with lock_work_dir(work):  # at once, while the worker still lives
        pass


def test_resume_refusals_are_one_line(tmp_path):
    # Adversarial probe: --resume of a checkpoint that could not continue the run (here one of weights only) ended in
    # a traceback from deep inside the runner (KeyError: 'meta').
    import torch
    train = load_tool('train')
    work = tmp_path / 'run'
    with pytest.raises(SystemExit, match=r'missing.pth\' does not exist'):  # (check_config's)
        train.main([MAMBAOUT_DIGITS, '--work-dir', str(work), '--resume', str(tmp_path / 'missing.pth')])
    weights = tmp_path / 'weights.pth'
    torch.save({'state_dict': {}}, weights)
    proc = _run([sys.executable, 'tools/train.py', MAMBAOUT_DIGITS, '--work-dir', str(work), '--resume', str(weights),
                 '--cfg-options', *SMALL, *TINY, 'train_cfg.max_epochs=1'], expect_ok=False)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f'checkpoint {weights} is not a training checkpoint')
