"""The engine's pieces in isolation: checks of bad configs, checkpoint safety, resume discovery, metrics."""
import pickle

import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from visionattn.heads.classification.task import ImageClassifier  # noqa: E402

from visionattn.engine import Accuracy, check_config, find_resume_checkpoint, load_training_checkpoint  # noqa: E402
from visionattn.hub import CheckpointError  # noqa: E402

pytestmark = pytest.mark.tools

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
