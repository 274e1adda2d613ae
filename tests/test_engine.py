"""The engine's pieces in isolation: checks of bad configs, checkpoint safety, resume discovery, metrics."""
import pickle
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from visionattn.heads.classification.task import ImageClassifier  # noqa: E402

from visionattn.engine import Accuracy, check_config, find_resume_checkpoint, load_training_checkpoint  # noqa: E402
from visionattn.hub import CheckpointError  # noqa: E402

pytestmark = pytest.mark.tools
ROOT = Path(__file__).resolve().parents[1]

DIGITS = 'configs/classification/resnet_attn_digits.py'


def test_unknown_model_name_is_named_with_suggestions():
    with pytest.raises(ValueError, match=r"'eca_resnet81' is not a registered .* did you mean .*eca_resnet18"):
        ImageClassifier(backbone='eca_resnet81', num_classes=10)


def test_check_config_names_a_missing_dataset(tmp_path):
    cfg = Config.fromfile('configs/classification/_base_/imagenet.py')
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='train_dataloader.dataset.data_root=.*nowhere.* does not exist'):
        check_config(cfg)


def test_check_config_names_an_unknown_backbone():
    cfg = Config.fromfile(DIGITS)
    cfg.model.backbone = 'not_a_model'
    with pytest.raises(ValueError, match="model.backbone='not_a_model'"):
        check_config(cfg)


@pytest.mark.parametrize('key, value, message', [
    ('train_dataloader.batch_size', 0, 'train_dataloader.batch_size=0 must be at least 1'),
    ('val_dataloader.batch_size', 2.5, r"val_dataloader.batch_size=2.5 must be a whole number"),
    ('train_dataloader.num_workers', -1, 'train_dataloader.num_workers=-1 must be at least 0'),
    ('train_dataloader.dataset.max_samples', -5, 'max_samples=-5 must be at least 1'),  # sliced [:-5], silently
    ('train_dataloader.dataset.max_samples', 'abc', "max_samples='abc' must be a whole number"),
    ('default_hooks.logger.interval', 0, 'default_hooks.logger.interval=0 must be at least 1'),
    ('default_hooks.checkpoint.interval', 0, 'checkpoint.interval=0 must be at least 1'),  # only the final save
    # mmengine's own OptimWrapper took these: gradient ascent, then 1/2.5-scaled losses
    ('optim_wrapper.clip_grad', dict(max_norm=-1.0), 'clip_grad.max_norm must be a finite number > 0'),
    ('optim_wrapper.accumulative_counts', 2.5, 'accumulative_counts .* must be a whole number'),
])
def test_check_config_names_bad_loader_and_hook_counts(key, value, message):
    # Adversarial probe: these failed deep inside mmengine/torch naming no option, or were taken silently.
    cfg = Config.fromfile(DIGITS)
    node = cfg
    *parents, last = key.split('.')
    for name in parents:
        node = node[name]
    node[last] = value
    with pytest.raises(ValueError, match=message):
        check_config(cfg)


def test_accuracy_topk():
    metric = Accuracy(topk=(1, 2))
    scores = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3]])
    labels = [0, 0, 2]
    metric.process(None, [{'pred_score': s, 'gt_label': torch.tensor(y)} for s, y in zip(scores, labels)])
    result = metric.compute_metrics(metric.results)
    assert result['top1'] == pytest.approx(100 / 3)
    assert result['top2'] == pytest.approx(200 / 3)


class _NotData:
    def __reduce__(self):
        return (print, ('pickled code ran',))


def test_training_checkpoint_loader_refuses_pickled_code(tmp_path):
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        torch.save({'state_dict': {}, 'payload': _NotData()}, f)
    with pytest.raises(CheckpointError, match='would run code'):
        load_training_checkpoint(path)


def test_training_checkpoint_loader_reads_engine_state(tmp_path):
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    from visionattn.engine.runner import _plain_message_hub
    buffer = HistoryBuffer()
    buffer.update(1.5)
    path = tmp_path / 'ok.pth'
    state = {'state_dict': {'w': torch.ones(2)}, 'message_hub': {'log_scalars': {'loss': buffer}},
             'rng_states': [{'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}]}
    _plain_message_hub(state)  # what VisionRunner does before writing
    torch.save(state, path)
    loaded = load_training_checkpoint(path)
    assert loaded['message_hub']['log_scalars']['loss'].current() == 1.5
    assert loaded['rng_states'][0]['numpy'][0] == 'MT19937'


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / 'cut.pth'
    torch.save({'state_dict': {'w': torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match='truncated or corrupted'):
        load_training_checkpoint(path)


def test_resume_discovery_skips_dangling_records_and_temporaries(tmp_path):
    assert find_resume_checkpoint(tmp_path) is None
    (tmp_path / 'epoch_2.pth.tmp').write_bytes(b'partial')
    assert find_resume_checkpoint(tmp_path) is None
    (tmp_path / 'epoch_1.pth').write_bytes(pickle.dumps(1))
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_2.pth'))  # named file never completed
    assert find_resume_checkpoint(tmp_path) == str(tmp_path / 'epoch_1.pth')


def test_runner_init_weights_keeps_the_built_weights():
    # mmengine's runner calls model.init_weights() before training; timm's ResNet.init_weights would re-draw every
    # weight and wipe a pretrained backbone, so task models apply only an explicit init_cfg.
    torch.manual_seed(0)
    model = ImageClassifier('eca_resnet18', num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_weights()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, changed


def test_every_mmengine_registry_has_a_visionattn_child():
    # Issue 22: the runner warned "Failed to search registry with scope visionattn" for each registry without one
    # (optimizer, optim_wrapper, parameter scheduler, visualizer, vis_backend, log_processor, ...).
    import mmengine.registry as roots
    from mmengine.registry import DefaultScope, Registry

    import visionattn.engine  # noqa: F401
    names = [n for n in dir(roots) if isinstance(getattr(roots, n), Registry)]
    assert {'OPTIMIZERS', 'PARAM_SCHEDULERS', 'VISUALIZERS', 'VISBACKENDS', 'LOG_PROCESSORS'} <= set(names)
    with DefaultScope.overwrite_default_scope('visionattn'):
        for name in names:
            with getattr(roots, name).switch_scope_and_registry('visionattn') as registry:
                assert registry.scope == 'visionattn', f'{name} has no child registry in scope visionattn'


_REGISTERED = """
import importlib, json, pkgutil
import visionattn.engine.registry as registries
for package in ('visionattn.heads', 'visionattn.engine', 'visionattn.data'):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):
        if not info.name.endswith(('mmdet_compat', 'mmseg_compat')):  # they register into mmdet's / mmseg's own
            importlib.import_module(info.name)
print(json.dumps({name: sorted(getattr(registries, name).module_dict) for name in registries.__all__}))
"""

_LOOKUP = """
import json, sys
import visionattn.engine.registry as registries
kind, names = json.loads(sys.stdin.read())
print(json.dumps([f'{kind}.{name}' for name in names if getattr(registries, kind).get(name) is None]))
"""


def test_every_registered_name_resolves_from_a_fresh_process():
    # Every class registers in a module that its registry's locations list: a config naming it by string then builds
    # in a process that imported nothing else (before the task moves of issue 24, HOOKS did not list the diffusion
    # and segmentation task modules, and their show hooks resolved only once something else had imported them).
    import json
    import subprocess
    import sys
    everything = subprocess.run([sys.executable, '-c', _REGISTERED], capture_output=True, text=True, check=True)
    registered = json.loads(everything.stdout.strip().splitlines()[-1])
    assert sum(map(len, registered.values())) > 50 and 'SegPredictionImagesHook' in registered['HOOKS']
    missing = []
    for kind, names in registered.items():  # a process per registry: one lookup must not import another's modules
        if names:
            fresh = subprocess.run([sys.executable, '-c', _LOOKUP], input=json.dumps([kind, names]),
                                   capture_output=True, text=True, check=True)
            missing += json.loads(fresh.stdout.strip().splitlines()[-1])
    assert not missing, f'registered, but not found by name from the registry alone: {missing}'


def test_ema_that_would_start_after_the_run_fails_in_the_config_check():
    # Issue 22: --cfg-options train_cfg.max_epochs=1 on the digits config crashed in EMAHook.before_train.
    cfg = Config.fromfile(DIGITS)
    cfg.merge_from_dict({'train_cfg.max_epochs': 1})
    with pytest.raises(ValueError, match=r'custom_hooks\.4\.begin_epoch=2 \(EMAHook\) is beyond '
                                         r'train_cfg\.max_epochs=1.*--cfg-options custom_hooks\.4\.begin_epoch=N'):
        check_config(cfg)
    cfg.merge_from_dict({'custom_hooks.4.begin_epoch': 1})  # the way out the message names
    check_config(cfg)


def test_plain_checkpoint_round_trip_is_exact(tmp_path):
    # What the engine saves holds no numpy object (torch's weights-only loader reads it with no allow-list), and
    # resume gets the numpy state back bit for bit.
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    from visionattn.engine import plain_checkpoint
    buffer = HistoryBuffer()
    for value in (1.5, 0.25, 3.0):
        buffer.update(value)
    rng = np.random.RandomState(3).get_state()
    state = {'state_dict': {'w': torch.ones(2)}, 'message_hub': {'log_scalars': {'loss': buffer},
                                                                 'runtime_info': {'eta': np.float64(12.5)}},
             'rng_states': [{'numpy': rng, 'torch': torch.get_rng_state()}], 'meta': {'palette': np.eye(3, 2)}}
    plain_checkpoint(state)
    path = tmp_path / 'plain.pth'
    torch.save(state, path)
    torch.load(path, weights_only=True)  # no numpy global left
    loaded = load_training_checkpoint(path)
    assert loaded['message_hub']['log_scalars']['loss'].data[0].tolist() == [1.5, 0.25, 3.0]
    assert loaded['message_hub']['runtime_info']['eta'] == 12.5
    got = loaded['rng_states'][0]['numpy']
    assert got[0] == rng[0] and got[1].dtype == rng[1].dtype and np.array_equal(got[1], rng[1]) and got[2:] == rng[2:]
    assert np.array_equal(loaded['meta']['palette'], np.eye(3, 2))


def _task_models():
    from visionattn.engine import MODELS
    from visionattn.engine.base import TaskModel
    MODELS.import_from_location()
    names = sorted(name for name, cls in MODELS.module_dict.items()
                   if isinstance(cls, type) and issubclass(cls, TaskModel))
    assert names, 'the MODELS registry holds no task model'
    return names


@pytest.mark.parametrize('name', _task_models())
def test_task_model_names_an_unknown_mode(name):
    # The mode dispatch lives once in TaskModel.forward; it rejects a bad mode before any network runs, so a bare
    # module of each registered task model suffices.
    from visionattn.engine import MODELS
    cls = MODELS.get(name)
    model = cls.__new__(cls)
    torch.nn.Module.__init__(model)
    for batch in (torch.zeros(2, 3, 8, 8), torch.zeros(0, 3, 8, 8)):  # the empty-batch rule leaves it to forward
        with pytest.raises(ValueError, match=r"unknown mode='bogus'.*'loss', 'predict', 'tensor'"):
            model(batch, None, mode='bogus')


def test_a_checkpoint_with_integer_weights_does_not_fit():
    # Adversarial probe: int8 or bool tensors of the right shapes were cast into the float weights on --resume,
    # tools/test.py and publish.py (a 12.5 % top-1 test run instead of an error).
    from visionattn.engine.runner import _check_shapes
    from visionattn.hub import CheckpointMismatchError
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _check_shapes(model, state, 'ok.pth')  # the model's own weights fit (num_batches_tracked is an int64 buffer)
    state['0.weight'] = state['0.weight'].to(torch.int8)
    with pytest.raises(CheckpointMismatchError, match=r'0.weight: checkpoint holds torch.int8, model torch.float32'):
        _check_shapes(model, state, 'int8.pth')


def test_resume_names_an_optimizer_that_does_not_fit(monkeypatch):
    # Adversarial probe: resuming under a config whose optimizer groups the parameters differently ended in torch's
    # bare 'different number of parameter groups', naming neither the checkpoint nor the cause.
    from mmengine.runner import Runner

    from visionattn.engine import VisionRunner
    from visionattn.hub import CheckpointMismatchError

    def torch_refuses(self, filename, *args):
        raise ValueError('loaded state dict has a different number of parameter groups')
    monkeypatch.setattr(Runner, 'resume', torch_refuses)
    with pytest.raises(CheckpointMismatchError, match=r'checkpoint epoch_2.pth: its optimizer state does not fit'):
        VisionRunner.resume(object.__new__(VisionRunner), 'epoch_2.pth')

    def other_error(self, filename, *args):
        raise ValueError('something else')
    monkeypatch.setattr(Runner, 'resume', other_error)
    with pytest.raises(ValueError, match='something else'):  # other errors pass through unchanged
        VisionRunner.resume(object.__new__(VisionRunner), 'epoch_2.pth')


def test_a_resume_with_nothing_left_to_train_says_so():
    # Adversarial probe: resuming a finished run (or with max_epochs below the checkpoint's epoch) exited 0 silently.
    from types import SimpleNamespace

    from visionattn.engine import VisionRunner
    warnings_seen = []
    runner = object.__new__(VisionRunner)
    runner._has_loaded, runner._load_from = True, 'epoch_2.pth'
    runner.logger = SimpleNamespace(warning=warnings_seen.append)
    for loop, expected in ((SimpleNamespace(epoch=2, max_epochs=1), 'at epoch 2 and the config trains 1 epochs'),
                           (SimpleNamespace(iter=40, max_iters=40), 'at iteration 40'),
                           (SimpleNamespace(epoch=1, max_epochs=3), None)):
        warnings_seen.clear()
        runner._train_loop = loop
        runner._warn_if_nothing_left()
        assert (expected in warnings_seen[0]) if expected else not warnings_seen


def _stub_runner(batches, epoch, iteration, max_epochs=3, val_loop=None):
    """A VisionRunner around a real EpochBasedTrainLoop over ``batches`` (a list), with nothing else built: the loop
    trains a batch by recording it."""
    from types import SimpleNamespace

    from mmengine.runner import EpochBasedTrainLoop

    from visionattn.engine import VisionRunner
    runner = object.__new__(VisionRunner)
    loop = object.__new__(EpochBasedTrainLoop)
    loop._runner, loop.dataloader, loop._epoch, loop._iter = runner, batches, epoch, iteration
    loop._max_epochs, loop._max_iters, loop.val_begin, loop.val_interval = max_epochs, max_epochs * len(batches), 1, 1
    loop.dynamic_milestones, loop.dynamic_intervals, loop.stop_training = [0], [1], False
    loop.trained = []

    def run_iter(idx, data_batch):
        loop.trained.append(data_batch)
        loop._iter += 1
    loop.run_iter = run_iter
    runner._train_loop, runner._val_loop, runner._hooks, runner._world_size = loop, val_loop, [], 1
    runner._resume, runner.model = True, torch.nn.Linear(2, 1)
    runner.optim_wrapper, runner.param_schedulers = None, None
    runner.logger = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None)
    return runner, loop


def test_an_epoch_loop_resumed_within_an_epoch_goes_on_with_its_next_batch(monkeypatch):
    # Adversarial probe: a checkpoint saved within an epoch (CheckpointHook by_epoch=False on an epoch-based loop)
    # resumed by starting that epoch over: its first batches were trained twice and the run took more iterations
    # than an uninterrupted one (8 instead of 6 on the digits, with other weights).
    from mmengine.runner import Runner

    from visionattn.engine import VisionRunner
    batches = [f'batch{i}' for i in range(5)]
    runner, loop = _stub_runner(batches, epoch=1, iteration=5 + 2)  # epoch 2, after its second batch
    monkeypatch.setattr(Runner, 'resume', lambda self, *args: None)
    VisionRunner.resume(runner, 'iter_7.pth')
    loop.run_epoch()
    assert loop.trained == batches[2:] and (loop.epoch, loop.iter) == (2, 10)
    loop.run_epoch()  # the next epoch is whole again
    assert loop.trained == batches[2:] + batches and (loop.epoch, loop.iter) == (3, 15)
    # a position that cannot lie in an epoch of this config (its batch size differs) is named, not trained
    runner, loop = _stub_runner(batches, epoch=1, iteration=12)
    with pytest.raises(CheckpointError, match=r'iteration 12, which does not fit this config\'s 5 iterations per'):
        VisionRunner.resume(runner, 'iter_12.pth')


def test_a_resumed_run_validates_what_the_interrupted_run_validated_after_the_save(monkeypatch):
    # Adversarial probe: a step's validation runs after its checkpoint is written, so a run resumed from epoch_1.pth
    # never had epoch 1's validation: missing from the training curves, and from the best score (save_best could
    # then keep a worse model as the best).
    from mmengine.runner import Runner, ValLoop

    from visionattn.engine import VisionRunner
    val_loop = object.__new__(ValLoop)
    val_loop.runs = 0
    val_loop.run = lambda: setattr(val_loop, 'runs', val_loop.runs + 1)
    monkeypatch.setattr(Runner, 'resume', lambda self, *args: None)
    runner, _ = _stub_runner(['b0', 'b1'], epoch=1, iteration=2, val_loop=val_loop)
    VisionRunner.resume(runner, 'epoch_1.pth')
    runner.call_hook('before_train')
    runner.call_hook('before_train')
    assert val_loop.runs == 1
    runner, _ = _stub_runner(['b0', 'b1'], epoch=1, iteration=3, val_loop=val_loop)  # within epoch 2: none due
    VisionRunner.resume(runner, 'iter_3.pth')
    runner.call_hook('before_train')
    assert val_loop.runs == 1


def test_the_training_curves_keep_one_validation_per_step():
    from types import SimpleNamespace

    from visionattn.engine import TrainingCurveHook
    hook = TrainingCurveHook()
    hook._plot = lambda runner: None
    runner = SimpleNamespace(iter=6, epoch=1)
    hook.after_val_epoch(runner, {'top1': 50.0})
    hook.after_val_epoch(runner, {'top1': 50.0})  # validated again on resume
    assert hook.history['val'] == [{'iter': 6, 'epoch': 1, 'top1': 50.0}]


def test_a_resume_with_another_batch_size_or_epoch_length_is_refused(tmp_path):
    # Adversarial probe: resuming with another train batch size (or training set) went on silently: the iteration
    # count, the restored schedule (its begin/end in iterations) and the epoch position then describe other data.
    from visionattn.engine import VisionRunner
    runner, loop = _stub_runner(torch.utils.data.DataLoader(list(range(24)), batch_size=8), epoch=1, iteration=3)
    path = tmp_path / 'epoch_1.pth'
    meta = {'epoch': 1, 'iter': 3, 'train_batch_size': 8, 'world_size': 1, 'epoch_length': 3}
    torch.save({'meta': meta, 'state_dict': runner.model.state_dict()}, path)
    VisionRunner.load_checkpoint(runner, str(path))  # the same settings load
    loop.dataloader = torch.utils.data.DataLoader(list(range(24)), batch_size=4)
    with pytest.raises(CheckpointError, match=r'8 images per step on each of 1 process\(es\).*batch_size=4 on 1 '
                                              r'\(4 per step\).*load_from=.*epoch_1.pth resume=False'):
        VisionRunner.load_checkpoint(runner, str(path))
    loop.dataloader = torch.utils.data.DataLoader(list(range(40)), batch_size=8)
    with pytest.raises(CheckpointError, match=r'3 iterations per epoch; this config has 5'):
        VisionRunner.load_checkpoint(runner, str(path))
    # what a save records for that check
    assert VisionRunner._data_facts(runner) == {'train_batch_size': 8, 'world_size': 1, 'epoch_length': 5}


def test_resuming_a_checkpoint_that_cannot_continue_the_run_is_refused(tmp_path):
    # Adversarial probe: --resume of a weights-only file failed with a bare KeyError: 'meta' from mmengine; --resume of
    # a best_*.pth (saved without optimizer and schedulers) went on silently with a fresh optimizer and the learning
    # rate schedule started over.
    from visionattn.engine import VisionRunner
    runner, _ = _stub_runner(torch.utils.data.DataLoader(list(range(24)), batch_size=8), epoch=1, iteration=3)
    weights = tmp_path / 'weights.pth'
    torch.save({'state_dict': runner.model.state_dict()}, weights)
    with pytest.raises(CheckpointError, match=r'weights.pth is not a training checkpoint.*load_from=.*resume=False'):
        VisionRunner.resume(runner, str(weights))
    best = tmp_path / 'best_accuracy_top1_epoch_1.pth'
    torch.save({'meta': {'epoch': 1, 'iter': 3}, 'state_dict': runner.model.state_dict(), 'message_hub': {}}, best)
    runner.optim_wrapper, runner.param_schedulers = object(), [object()]
    with pytest.raises(CheckpointError, match=r'holds no optimizer state and no learning-rate schedule .* start over '
                                              r'at iteration 3'):
        VisionRunner.resume(runner, str(best))


# Adversarial probes of the classification engine (metric, classifier, sampler, optimizer wrapper, configs).

def _accuracy(samples, topk=(1,)):
    metric = Accuracy(topk=topk)
    metric.process(None, [{'pred_score': s, 'gt_label': y} for s, y in samples])
    return metric.compute_metrics(metric.results)


def test_accuracy_reads_one_hot_and_soft_labels_as_their_class():
    # A one-hot gt_label was compared element-wise with the top indices: a wrong top-1 counted as a hit.
    scores = torch.tensor([0.1, 0.7, 0.2])
    assert _accuracy([(scores, torch.tensor([1.0, 0.0, 0.0]))])['top1'] == 0.0
    assert _accuracy([(scores, torch.tensor([0.3, 0.6, 0.1]))])['top1'] == 100.0  # a Mixup target: its top class
    assert _accuracy([(scores, torch.tensor([1]))], topk=2) == {'top2': 100.0}  # one-element label, int topk


@pytest.mark.parametrize('score, label, message', [
    (torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor(1), r'pred_score must be a 1-D .* shape \(1, 3\)'),  # was 100%
    (torch.tensor([0.1, 0.7, 0.2]), torch.tensor(3), 'gt_label is 3, but the predictions have 3 classes'),  # a miss
    (torch.tensor([0.1, 0.7, 0.2]), torch.tensor(-1), 'gt_label is -1.*no ignore label'),  # a miss
    (torch.tensor([0.1, 0.7, 0.2]), torch.tensor(1.5), 'whole class index, got 1.5'),  # a miss
    (torch.tensor([0.1, 0.7, 0.2]), torch.tensor([0, 1]), r'one class index or a vector of the 3 .* shape \(2,\)'),
])
def test_accuracy_names_a_bad_score_or_label(score, label, message):
    with pytest.raises(ValueError, match=message):
        _accuracy([(score, label)], topk=(1, 5))


def test_accuracy_of_an_empty_evaluation_set_and_bad_topk_are_named():
    with pytest.raises(ValueError, match='no samples: the evaluation set is empty'):  # was IndexError
        Accuracy().compute_metrics([])
    for topk in ((1.5,), (0, 1), ()):
        with pytest.raises(ValueError, match='topk must be a positive whole number'):
            Accuracy(topk=topk)


@pytest.mark.parametrize('kwargs, message', [
    (dict(label_smoothing=-0.1), r'label_smoothing must be in \[0, 1\)'),  # trained silently
    (dict(label_smoothing=1.0), r'label_smoothing must be in \[0, 1\)'),  # uniform targets: learns nothing
    (dict(label_smoothing=1.5, mixup=dict(mixup_alpha=0.8)), r'label_smoothing must be in \[0, 1\)'),  # < 0 targets
    (dict(mixup=dict(mixup_alpha=0.0, cutmix_alpha=0.0)), 'mixup mixes nothing'),  # timm asserts at the first step
    (dict(mixup=dict(mixup_alpha=0.8, prob=2)), r'mixup.prob must be a number in \[0, 1\]'),
    (dict(mixup=dict(mixup_alpha=0.8, mode='Batch')), "mixup.mode must be 'batch'"),  # silently 'batch'
    (dict(mixup=dict(mixup_alpha=0.8, num_classes=3)), 'come from the model'),  # TypeError: multiple values
    (dict(num_classes=2.5), 'num_classes must be a positive whole number'),
])
def test_image_classifier_checks_smoothing_and_mixup(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(**dict(dict(backbone='resnet10t', num_classes=3), **kwargs))


def test_image_classifier_names_soft_float_and_negative_labels():
    from mmengine.structures import BaseDataElement
    model = ImageClassifier(backbone='resnet10t', num_classes=3)
    images = torch.randn(2, 3, 16, 16)
    for labels, message in (([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], 'one integer class index per image'),  # batch 6
                            ([1.0, 2.0], 'one integer class index per image'),  # "expected target dtype Long"
                            ([-1, 2], 'is -1: labels are class indices 0..2 and there is no ignore label')):
        samples = [BaseDataElement(gt_label=torch.tensor(y)) for y in labels]
        with pytest.raises(ValueError, match=message):
            model.loss(images, samples)


def test_image_classifier_refuses_one_class_sample_mismatches_and_takes_int32_labels():
    # Adversarial probes (round 7): num_classes=1 trained with a loss of 0 and predicted 1.0 for every image; predict
    # with fewer (or more) data samples than images dropped predictions (or left samples without one), silently;
    # int32 labels failed as "expected target dtype to be Long or Byte"; a sample without gt_label as an
    # AttributeError; backbone_kwargs=dict(num_classes=...) as "got multiple values for keyword argument".
    from mmengine.structures import BaseDataElement
    with pytest.raises(ValueError, match='num_classes=1: a softmax cross-entropy classifier over one class'):
        ImageClassifier(backbone='resnet10t', num_classes=1)
    for key in ('num_classes', 'features_only'):
        with pytest.raises(ValueError, match=rf"backbone_kwargs sets \['{key}'\]"):
            ImageClassifier(backbone='resnet10t', num_classes=3, backbone_kwargs={key: 5 if key == 'num_classes' else
                                                                                  True})
    torch.manual_seed(0)
    model = ImageClassifier(backbone='resnet10t', num_classes=3).eval()
    images = torch.randn(4, 3, 16, 16)
    samples = lambda labels, dtype=torch.long: [BaseDataElement(gt_label=torch.tensor(y, dtype=dtype))  # noqa: E731
                                                for y in labels]
    for count in (2, 6):
        with pytest.raises(ValueError, match=f'predict got 4 images and {count} data samples'):
            model.predict(images, samples([0] * count))
    assert len(model.predict(images, samples([0] * 4))) == 4
    with torch.no_grad():
        torch.testing.assert_close(model.loss(images, samples([0, 1, 2, 1], torch.int32))['loss'],
                                   model.loss(images, samples([0, 1, 2, 1]))['loss'])
    with pytest.raises(ValueError, match=r'data samples \[3\] have no gt_label'):
        model.loss(images, samples([0, 1, 2]) + [BaseDataElement()])
    from visionattn.heads.classification.task import cls_collate
    with pytest.raises(ValueError, match='needs images of one size'):  # was torch.stack's message
        cls_collate([{'img': torch.zeros(3, 4, 4, dtype=torch.uint8), 'gt_label': 0, 'index': 0},
                     {'img': torch.zeros(3, 5, 4, dtype=torch.uint8), 'gt_label': 1, 'index': 1}])


def test_repeat_aug_sampler_checks_its_counts():
    from visionattn.engine import RepeatAugSampler
    for kwargs, message in ((dict(num_repeats=0), 'num_repeats must be a number > 0'),  # an empty epoch, silently
                            (dict(num_repeats=-1), 'num_repeats must be a number > 0'),
                            (dict(selected_ratio=-1), 'selected_ratio must be a number >= 0'),
                            (dict(selected_round=-4), 'selected_round must be a whole number >= 0')):  # taken as 0
        with pytest.raises(ValueError, match=message):
            RepeatAugSampler(list(range(10)), seed=0, **kwargs)


@pytest.mark.parametrize('kwargs, message', [
    (dict(clip_grad=dict(max_norm=-1.0)), 'max_norm must be a finite number > 0'),  # reversed every gradient
    (dict(clip_grad=dict(max_norm=0.0)), 'max_norm must be a finite number > 0'),  # zeroed every gradient
    (dict(clip_grad=dict(type='value', clip_value=-1.0)), 'clip_value must be a finite number > 0'),  # constant -1
    (dict(clip_grad=dict(type='norm')), 'takes max_norm'),  # a TypeError at the first step
    (dict(clip_grad=dict(type='agc', clip_factor=0.02, eps=-1)), 'eps must be a finite number >= 0'),
    (dict(accumulative_counts=2.5), 'accumulative_counts .* must be a whole number >= 1'),  # loss scaled by 1/2.5
])
def test_agc_optim_wrapper_checks_clipping_and_accumulation(kwargs, message):
    from visionattn.engine import AGCOptimWrapper
    model = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match=message):
        AGCOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)
    clip_grad = dict(type='norm', max_norm=1.0)
    AGCOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), clip_grad=clip_grad)
    assert clip_grad == dict(type='norm', max_norm=1.0)  # mmengine popped the caller's 'type'


@pytest.mark.parametrize('name', ['nat_digits', 'patnet_digits', 'biformer_digits'])
def test_digits_schedule_exempts_what_each_family_lists_from_weight_decay(name):
    # adamw_cosine.py promises no decay on 1-D parameters and on the relative-position tables; NAT's attn.rpb
    # (no_weight_decay_keywords) and PATNet's rpe_table (no_weight_decay) were decayed. Each parameter is in one group.
    from mmengine.optim import build_optim_wrapper

    from visionattn.engine import MODELS
    cfg = Config.fromfile(f'configs/classification/{name}.py')
    model = MODELS.build(cfg.model)
    groups = build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups
    decay = [(id(p), g['weight_decay']) for g in groups for p in g['params']]
    assert sorted(i for i, _ in decay) == sorted(id(p) for p in model.parameters())
    decay = dict(decay)
    net = model.classifier
    skip = set(getattr(net, 'no_weight_decay', set)())
    keywords = set(getattr(net, 'no_weight_decay_keywords', set)())
    base = cfg.optim_wrapper.optimizer.weight_decay
    for key, p in net.named_parameters():
        exempt = p.ndim <= 1 or key in skip or any(k in key for k in keywords)
        assert decay[id(p)] == (0.0 if exempt else base), key


def test_cls_preprocessor_refuses_mean_std_on_the_0_255_scale():
    # mmpretrain's mean=[123.675, ...] was scaled by 255 once more: every image normalised to about -0.008, silently.
    from visionattn.engine import ClsDataPreprocessor
    for kwargs in (dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)), dict(std=(0.2, 0.0, 0.2))):
        with pytest.raises(ValueError, match=r'on the 0..1 scale .* divided by 255'):
            ClsDataPreprocessor(**kwargs)


@pytest.mark.parametrize('kind', ['classification', 'segmentation', 'detection'])
def test_preprocessors_refuse_images_on_the_0_1_scale(kind):
    # Adversarial probe: float images in [0, 1] (ToTensor's scale) were normalised as 0..255 ones: a near-constant map
    # of about -2, silently. uint8 images, floats on the 0..255 scale and an all-zero image pass.
    from visionattn.heads.detection.task import DetDataPreprocessor
    from visionattn.heads.segmentation.task import SegDataPreprocessor

    from visionattn.engine import ClsDataPreprocessor
    make = {'classification': ClsDataPreprocessor, 'segmentation': SegDataPreprocessor,
            'detection': DetDataPreprocessor}[kind]
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match='floats on the 0..1 scale'):
        make()({'inputs': images, 'data_samples': None})
    scaled = make()({'inputs': images * 255, 'data_samples': None})['inputs']
    torch.testing.assert_close(scaled, make()({'inputs': (images * 255).round().to(torch.uint8),
                                               'data_samples': None})['inputs'], atol=0.02, rtol=0)
    assert torch.isfinite(make()({'inputs': torch.zeros(2, 3, 8, 8), 'data_samples': None})['inputs']).all()


# Adversarial probes of the optimizer and schedule settings, on a tiny runner (4 samples, 2 iterations an epoch).

class _TinyModel(BaseModel):
    """mmengine's model API around a backbone (a linear layer and a norm) and a head."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Module()
        self.backbone.fc, self.backbone.norm = torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)
        self.head = torch.nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.head(self.backbone.norm(self.backbone.fc(inputs)))
        return dict(loss=out.pow(2).mean()) if mode == 'loss' else out


def _tiny_runner(work_dir, max_epochs=2, end=2, paramwise_cfg=None, resume=False, optimizer=None, schedulers=None):
    """A VisionRunner of a tiny model under warm-up (1 epoch) then cosine (to epoch ``end``), iteration-based, whose
    ``logger.warning`` / ``logger.info`` calls are kept in ``runner.seen``. ``optimizer`` (the optimizer's config) and
    ``schedulers`` (the param_scheduler list) replace the SGD and the schedule."""
    from mmengine.optim import CosineAnnealingLR, LinearLR

    from visionattn.engine import VisionRunner
    optim_wrapper = dict(optimizer=optimizer or dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4))
    if paramwise_cfg is not None:
        optim_wrapper['paramwise_cfg'] = paramwise_cfg
    _tiny_runner.runs = getattr(_tiny_runner, 'runs', 0) + 1
    runner = VisionRunner(
        model=_TinyModel(), work_dir=str(work_dir), experiment_name=f'tiny{_tiny_runner.runs}', resume=resume,
        train_dataloader=dict(dataset=[dict(inputs=torch.ones(2))] * 4, batch_size=2, collate_fn=dict(
            type='default_collate'), sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs), optim_wrapper=optim_wrapper,
        param_scheduler=schedulers or [dict(type=LinearLR, start_factor=0.1, by_epoch=True, begin=0, end=1,
                                            convert_to_iter_based=True),
                                       dict(type=CosineAnnealingLR, by_epoch=True, begin=1, end=end, eta_min=1e-3,
                                            convert_to_iter_based=True)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)), default_scope='visionattn',
        log_level='ERROR', visualizer=dict(type='Visualizer', vis_backends=[]), env_cfg=dict(cudnn_benchmark=False))
    runner.seen = []
    runner.logger.warning = runner.logger.info = lambda message, *args, **kwargs: runner.seen.append(message)
    return runner


def _lrs(runner):
    return [round(float(v), 10) for v in runner.message_hub.get_scalar('train/lr').data[0]]


def test_a_misspelt_paramwise_setting_is_named():
    # Adversarial probe: mmengine's constructor ignored a paramwise_cfg key it does not know (norm_decy_mult: the norms
    # kept their weight decay) and stored a misspelt custom_keys setting in the parameter group, where nothing read it.
    cfg = Config.fromfile(DIGITS)
    cfg.optim_wrapper.paramwise_cfg.norm_decy_mult = 0.0
    with pytest.raises(ValueError, match=r"paramwise_cfg.norm_decy_mult: .*no setting 'norm_decy_mult' .*did you "
                                         r"mean norm_decay_mult"):
        check_config(cfg)
    cfg = Config.fromfile(DIGITS)
    cfg.optim_wrapper.paramwise_cfg.custom_keys = dict(rpb=dict(decay_mul=0.0))
    with pytest.raises(ValueError, match=r'custom_keys.rpb.decay_mul: neither lr_mult, decay_mult nor an option of '
                                         r'AdamW.*did you mean decay_mult'):
        check_config(cfg)


@pytest.mark.parametrize('custom_keys, message', [
    ({'haed': dict(lr_mult=0.1)}, r"custom_keys\['haed'\] applies to no parameter: it is part of no parameter name "
                                  r"of _TinyModel \(did you mean head\?\)"),
    # each norm parameter lies in the backbone: mmengine applies only the longest key that matches
    ({'backbone': dict(lr_mult=0.1), 'norm': dict(decay_mult=0.0)},
     r"custom_keys\['norm'\] applies to no parameter: every parameter it matches \(backbone.norm.weight ...\) takes "
     r"the longer key 'backbone' first"),
])
def test_a_custom_key_that_applies_to_no_parameter_is_named(tmp_path, custom_keys, message):
    # Adversarial probe: such custom_keys entries were ignored without a word, the parameters trained at the base lr.
    runner = _tiny_runner(tmp_path, paramwise_cfg=dict(custom_keys=custom_keys))
    with pytest.raises(ValueError, match=message):
        runner.train()


@pytest.mark.parametrize('config', sorted((ROOT / 'configs' / 'classification').glob('*_digits*.py')),
                         ids=lambda p: p.stem)
def test_the_digits_configs_custom_keys_apply_to_their_models(config):
    # The shared adamw_cosine.py listed NAT's rpb and PATNet's rpe_table for every family; each family's config now
    # names its own tables, and every key must reach a parameter of the model it trains.
    from visionattn.engine import MODELS, read_config
    from visionattn.engine.optim import check_custom_keys, check_paramwise_cfg
    cfg = read_config(str(config))
    check_paramwise_cfg(cfg.optim_wrapper)
    check_custom_keys(MODELS.build(cfg.model), cfg.optim_wrapper)
    backbone = cfg.model.backbone
    tables = {'rpb'} if backbone.startswith('nat') else {'rpe_table'} if backbone.startswith('patnet') else set()
    assert set(cfg.optim_wrapper.paramwise_cfg.get('custom_keys', {})) == tables


def test_a_schedule_that_ends_after_the_training_loop_is_named(tmp_path):
    # Adversarial probe: --cfg-options train_cfg.max_epochs=1 left the cosine's end at the config's epoch, and the run
    # ended at the peak learning rate without a word.
    runner = _tiny_runner(tmp_path / 'short', max_epochs=1, end=3)
    runner.train()
    overruns = [m for m in runner.seen if 'after the training loop' in m]
    assert len(overruns) == 1, runner.seen  # the warm-up ends with the loop: no message
    assert ('param_scheduler.1 (CosineAnnealingLR: begin=2, end=6, T_max=4, in iterations) ends at iteration 6 '
            '(epoch 3), after the training loop, which ends at epoch 1 (iteration 2; train_cfg.max_epochs=1)'
            in overruns[0]) and 'it never starts' in overruns[0]
    runner = _tiny_runner(tmp_path / 'full', max_epochs=3, end=3)  # mmengine's warm-up then main schedule
    runner.train()
    assert not [m for m in runner.seen if 'after the training loop' in m], runner.seen


def test_a_resume_with_an_extended_schedule_follows_the_config(tmp_path):
    # Adversarial probe: a run resumed with max_epochs and the cosine's end raised kept the checkpoint's end and T_max
    # (mmengine restores each scheduler's settings with its state): the learning rate stayed at the old schedule's
    # last value for the added epochs.
    _tiny_runner(tmp_path, max_epochs=2, end=2).train()
    runner = _tiny_runner(tmp_path, max_epochs=4, end=4, resume=True)
    runner.train()
    fresh = _tiny_runner(tmp_path / 'fresh', max_epochs=4, end=4)
    fresh.train()
    assert _lrs(runner)[4:] == _lrs(fresh)[4:] and len(_lrs(fresh)) == 8  # from the resume on: the config's schedule
    assert [(s.begin, s.end) for s in runner.param_schedulers] == [(0, 2), (2, 8)]
    applied = [m for m in runner.seen if 'with this config\'s parameter schedule' in m]
    assert applied, runner.seen
    assert 'param_scheduler.1 (CosineAnnealingLR, in iterations): T_max 2 -> 6, end 4 -> 8' in applied[0]
    # a resume under the schedule that saved the checkpoint changes nothing
    runner = _tiny_runner(tmp_path / 'fresh', max_epochs=4, end=4, resume=True)
    runner.train()
    assert not [m for m in runner.seen if 'parameter schedule' in m]


def _plateau_schedule(factor):
    from mmengine.optim import LinearLR, ReduceOnPlateauLR
    return [dict(type=LinearLR, start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
            # (an explicit end: mmengine sets an unset one to max_epochs, which a longer resumed run then changes)
            dict(type=ReduceOnPlateauLR, monitor='loss', factor=factor, patience=1, by_epoch=True, begin=1, end=3)]


def test_a_resume_that_changes_a_plateau_schedule_is_refused(tmp_path):
    # A changed schedule is replayed from its first step to the checkpoint's position; ReduceOnPlateau steps on the
    # validation results, which a replay does not have, so a changed schedule holding one is refused, not guessed.
    from visionattn.hub import CheckpointMismatchError
    _tiny_runner(tmp_path, schedulers=_plateau_schedule(0.1)).train()
    runner = _tiny_runner(tmp_path, max_epochs=3, schedulers=_plateau_schedule(0.5), resume=True)
    with pytest.raises(CheckpointMismatchError, match=r"epoch_2.pth: this config's parameter schedule differs .*"
                                                      r"param_scheduler.1 \(ReduceOnPlateauLR, in epochs\): factor "
                                                      r"0.1 -> 0.5\), and param_scheduler.1 \(ReduceOnPlateau\) "
                                                      r"steps on the validation history.*resume=False"):
        runner.train()
    assert not (tmp_path / 'epoch_3.pth').exists()
    # under the schedule that saved the checkpoint, the resume goes on
    _tiny_runner(tmp_path, max_epochs=3, schedulers=_plateau_schedule(0.1), resume=True).train()
    assert (tmp_path / 'epoch_3.pth').exists()


def _settings(groups):
    """Each parameter group's hyper-parameters but those the schedulers drive."""
    return [{k: v for k, v in g.items() if k not in ('params', 'lr', 'initial_lr')} for g in groups]


@pytest.mark.parametrize('before, after, changed', [
    (dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
     dict(type='SGD', lr=0.1, momentum=0.8, weight_decay=5e-4, nesterov=True),
     ('momentum 0.9 -> 0.8', 'nesterov False -> True', 'weight_decay 0.0001 -> 0.0005', 'decay_mult 1.0 -> unset')),
    (dict(type='AdamW', lr=0.01, weight_decay=0.05),
     dict(type='AdamW', lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
     ('betas (0.9, 0.999) -> (0.8, 0.99)', 'eps 1e-08 -> 1e-06', 'weight_decay 0.05 -> 0.1')),
], ids=['SGD', 'AdamW'])
def test_a_resume_takes_the_configs_optimizer_settings(tmp_path, before, after, changed):
    # Adversarial probe: mmengine restored the optimizer's param_groups whole, so a weight decay, momentum, betas or eps
    # changed for the resumed run was ignored without a word, while the lr followed the config's schedule.
    custom_keys = {'head': dict(decay_mult=0.5), 'fc': dict(decay_mult=1.0)}
    _tiny_runner(tmp_path, optimizer=before, paramwise_cfg=dict(custom_keys=custom_keys)).train()
    paramwise = dict(norm_decay_mult=0.0, custom_keys={'head': dict(decay_mult=2.0)})  # changed too
    runner = _tiny_runner(tmp_path, max_epochs=3, optimizer=after, paramwise_cfg=paramwise, resume=True)
    runner.train()
    fresh = _tiny_runner(tmp_path / 'fresh', max_epochs=3, optimizer=after, paramwise_cfg=paramwise)
    fresh.train()
    # group by group (one per parameter, then mmengine's group of base settings), as a fresh run builds them
    assert _settings(runner.optim_wrapper.param_groups) == _settings(fresh.optim_wrapper.param_groups)
    decay = after['weight_decay']
    assert [g['weight_decay'] for g in runner.optim_wrapper.optimizer.param_groups] == \
        [decay, decay, 0.0, 0.0, 2 * decay, 2 * decay]  # backbone.fc, backbone.norm, head
    assert _lrs(runner)[4:] == _lrs(fresh)[4:]  # the schedule, unchanged, goes on
    applied = [m for m in runner.seen if "this config's optimizer settings" in m]
    assert len(applied) == 1 and all(c in applied[0] for c in changed), runner.seen
    assert not [m for m in runner.seen if 'parameter schedule' in m]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_a_resume_under_the_same_config_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    # Taking the config's optimizer settings must leave what the schedulers drive (here the lr and SGD's momentum,
    # mid-schedule at the checkpoint) as the checkpoint holds it, and per-parameter settings as they were.
    import shutil

    from mmengine.optim import CosineAnnealingLR, CosineAnnealingMomentum, LinearLR
    schedule = [dict(type=LinearLR, start_factor=0.1, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
                dict(type=CosineAnnealingLR, by_epoch=True, begin=1, end=3, eta_min=1e-3, convert_to_iter_based=True),
                dict(type=CosineAnnealingMomentum, by_epoch=True, begin=0, end=3, eta_min=0.5,
                     convert_to_iter_based=True)]
    paramwise = dict(norm_decay_mult=0.0, custom_keys={'head': dict(lr_mult=0.5, decay_mult=2.0)})
    _tiny_runner(tmp_path / 'full', max_epochs=3, schedulers=schedule, paramwise_cfg=paramwise).train()
    (tmp_path / 'resumed').mkdir()
    shutil.copy(tmp_path / 'full' / 'epoch_2.pth', tmp_path / 'resumed' / 'epoch_2.pth')
    runner = _tiny_runner(tmp_path / 'resumed', max_epochs=3, schedulers=schedule, paramwise_cfg=paramwise,
                          resume=True)
    runner.train()
    assert not [m for m in runner.seen if 'optimizer settings' in m or 'parameter schedule' in m], runner.seen
    full, resumed = (load_training_checkpoint(tmp_path / run / 'epoch_3.pth') for run in ('full', 'resumed'))
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert _same(full[key], resumed[key]), key


def test_a_resume_that_turns_on_amsgrad_is_refused(tmp_path):
    # amsgrad turned on for the resumed run was ignored with the other settings; taken from the config, the first
    # step would fail with a KeyError: the checkpoint's Adam state holds no max_exp_avg_sq.
    from visionattn.hub import CheckpointMismatchError
    _tiny_runner(tmp_path, optimizer=dict(type='AdamW', lr=0.01)).train()
    runner = _tiny_runner(tmp_path, max_epochs=3, optimizer=dict(type='AdamW', lr=0.01, amsgrad=True), resume=True)
    with pytest.raises(CheckpointMismatchError, match=r"epoch_2.pth: this config sets optim_wrapper.optimizer "
                                                      r"amsgrad=True, the run that saved it False, so its optimizer "
                                                      r"state holds no 'max_exp_avg_sq'.*amsgrad=False"):
        runner.train()
    # turned off, the extra state is not needed
    runner = _tiny_runner(tmp_path / 'on', optimizer=dict(type='AdamW', lr=0.01, amsgrad=True))
    runner.train()
    runner = _tiny_runner(tmp_path / 'on', max_epochs=3, optimizer=dict(type='AdamW', lr=0.01), resume=True)
    runner.train()
    assert any('amsgrad True -> False' in m for m in runner.seen), runner.seen


def test_config_optimizer_settings_reach_each_optimizer_and_unknown_options_are_kept():
    # A multi-optimizer config (optim_wrapper=dict(main=..., aux=...)) holds one state per name. An optimizer whose
    # options cannot be read (it takes **kwargs) keeps the checkpoint's settings: they cannot be told from what it may
    # count in its groups; the resume names those that differ.
    from types import SimpleNamespace

    from mmengine.optim import OptimWrapper, OptimWrapperDict

    from visionattn.engine.optim import apply_config_optimizer_settings

    class AnySGD(torch.optim.SGD):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)

    def wrappers(momentum, weight_decay):
        main, aux = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
        return OptimWrapperDict(main=OptimWrapper(torch.optim.SGD(main.parameters(), lr=0.1, momentum=momentum)),
                                aux=OptimWrapper(AnySGD(aux.parameters(), lr=0.1, weight_decay=weight_decay)))
    saved, seen = wrappers(0.9, 1e-4).state_dict(), []
    apply_config_optimizer_settings(wrappers(0.8, 5e-4), None, saved, 'epoch_2.pth',
                                    SimpleNamespace(warning=seen.append))
    assert saved['main']['param_groups'][0]['momentum'] == 0.8
    assert saved['aux']['param_groups'][0]['weight_decay'] == 1e-4
    assert seen == ["resuming epoch_2.pth with this config's optimizer settings, not the checkpoint's: "
                    'optim_wrapper.main: momentum 0.9 -> 0.8',
                    "resuming epoch_2.pth with the checkpoint's optimizer settings where this config's differ: "
                    'optim_wrapper.aux: weight_decay (the options of AnySGD cannot be read: it takes **kwargs)']


# Adversarial probes of checkpoint loading, best checkpoints and the training curves (second engine pass).

class _PredictingModel(_TinyModel):
    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = super().forward(inputs, data_samples, mode)
        return [out] if mode == 'predict' else out


def _loader():
    return dict(dataset=[dict(inputs=torch.ones(2))] * 4, batch_size=2, collate_fn=dict(type='default_collate'),
                sampler=dict(type='DefaultSampler', shuffle=False))


class _Metric:
    """A val/test metric reporting ``key`` from ``scores`` in turn."""

    @staticmethod
    def make(scores, key='accuracy/top1'):
        from mmengine.evaluator import BaseMetric

        class Metric(BaseMetric):
            default_prefix = None

            def process(self, data_batch, data_samples):
                self.results.append(0)

            def compute_metrics(self, results):
                return {key: next(scores)}
        return Metric()


@pytest.mark.parametrize('layout', ['plain state dict', 'module. prefix'])
def test_load_from_a_plain_or_module_prefixed_checkpoint_reaches_the_ema_model(tmp_path, layout):
    # Adversarial probe: with an EMAHook (the digits configs have one), load_from / tools/test.py of a plain state
    # dict failed with a bare KeyError: 'state_dict' inside mmengine's EMAHook, and one with DDP's 'module.' prefix
    # loaded into the model but nothing into the EMA copy (it only warned "missing keys"), which the test then swapped
    # in: the test ran on the random initial weights.
    from mmengine.hooks import Hook

    from visionattn.engine import VisionRunner
    source = _PredictingModel()
    for p in source.parameters():
        p.data.fill_(0.5)
    state = source.state_dict()
    checkpoint = state if layout == 'plain state dict' else {'state_dict': {f'module.{k}': v for k, v in state.items()}}
    torch.save(checkpoint, tmp_path / 'weights.pth')
    runner = VisionRunner(
        model=_PredictingModel(), work_dir=str(tmp_path), experiment_name=f'ema-{layout[:5]}',
        load_from=str(tmp_path / 'weights.pth'), test_dataloader=_loader(),
        test_evaluator=[_Metric.make(iter([1.0]))], test_cfg=dict(), custom_hooks=[dict(type='EMAHook')],
        default_scope='visionattn', log_level='ERROR', visualizer=dict(type='Visualizer', vis_backends=[]),
        env_cfg=dict(cudnn_benchmark=False))
    tested = []

    class Spy(Hook):
        def before_test_epoch(self, runner):  # after EMAHook swapped its weights in
            tested.append(runner.model.backbone.fc.weight.detach().clone())
    runner.register_hook(Spy(), priority='LOWEST')
    runner.test()
    assert torch.equal(tested[0], torch.full((2, 2), 0.5))


def test_save_best_of_a_metric_the_evaluator_does_not_report_is_named(tmp_path):
    # Adversarial probe: save_best='accuracy/top_1' where the evaluator reports 'accuracy/top1' failed after the first
    # epoch with a bare KeyError: 'accuracy/top_1' from mmengine's CheckpointHook.
    from visionattn.engine import ConfigError, VisionRunner
    runner = VisionRunner(
        model=_PredictingModel(), work_dir=str(tmp_path), experiment_name='best', train_dataloader=_loader(),
        val_dataloader=_loader(), val_evaluator=[_Metric.make(iter([10.0, 20.0]))], val_cfg=dict(),
        train_cfg=dict(by_epoch=True, max_epochs=2), optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook', interval=1, save_best='accuracy/top_1',
                                           rule='greater')),
        default_scope='visionattn', log_level='ERROR', visualizer=dict(type='Visualizer', vis_backends=[]),
        env_cfg=dict(cudnn_benchmark=False))
    with pytest.raises(ConfigError, match=r"save_best='accuracy/top_1' is not a metric the val_evaluator "
                                          r"reports \(did you mean accuracy/top1\?\); it reports accuracy/top1\."):
        runner.train()
    assert (tmp_path / 'epoch_1.pth').is_file()  # the epoch's checkpoint is there to resume


def test_the_training_curves_json_is_strict_json_with_nan_losses(tmp_path):
    # Adversarial probe: a NaN loss (or metric) was written as the bare token NaN, which JSON does not have: jq,
    # JavaScript and most readers other than Python's refuse the whole training_curves.json.
    import json
    from types import SimpleNamespace

    from visionattn.engine import TrainingCurveHook
    hook = TrainingCurveHook()
    hook.history = {'train': [{'iter': 1, 'epoch': 1, 'loss': float('nan'), 'lr': 0.1},
                              {'iter': 2, 'epoch': 1, 'loss': float('inf'), 'lr': 0.1}],
                    'val': [{'iter': 2, 'epoch': 1, 'mIoU': float('nan')}]}
    hook._plot(SimpleNamespace(work_dir=str(tmp_path), cfg=SimpleNamespace(filename='x.py'), experiment_name='x'))

    def refuse(token):
        raise ValueError(f'not JSON: {token}')
    curves = json.loads((tmp_path / 'training_curves.json').read_text(), parse_constant=refuse)
    assert [row['loss'] for row in curves['train']] == [None, None] and curves['val'][0]['mIoU'] is None
    assert (tmp_path / 'training_curves.png').is_file()


def test_the_training_curves_of_a_run_shorter_than_their_interval_are_written(tmp_path):
    # Adversarial probe: TrainingCurveHook(interval=50) on a run of 4 iterations recorded no training point, so neither
    # training_curves.png nor .json was written, its validation results included, without a word.
    import json
    from types import SimpleNamespace

    from visionattn.engine import TrainingCurveHook
    hook = TrainingCurveHook(interval=50)
    runner = SimpleNamespace(iter=0, epoch=0, max_iters=4, work_dir=str(tmp_path), experiment_name='x',
                             cfg=SimpleNamespace(filename='x.py'),
                             optim_wrapper=SimpleNamespace(get_lr=lambda: {'lr': [0.1]}))
    for step in range(4):
        runner.iter = step
        hook.after_train_iter(runner, step, outputs={'loss': torch.tensor(1.0 / (step + 1))})
    runner.iter = 4
    hook.after_val_epoch(runner, {'accuracy/top1': 50.0})
    curves = json.loads((tmp_path / 'training_curves.json').read_text())
    assert curves['train'] == [{'iter': 4, 'epoch': 1, 'loss': 0.25, 'lr': 0.1}]
    assert curves['val'] == [{'iter': 4, 'epoch': 0, 'accuracy/top1': 50.0}]
    assert (tmp_path / 'training_curves.png').is_file()
