"""tools/publish.py end to end: a tools/train.py run on the digits comes back out as timm weights (local-dir and the
Hugging Face hub route, offline), a segmentor's backbone goes back into timm, and the run's checkpoints and logs are
plain and quiet."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch

pytest.importorskip('mmengine')
from conftest import load_tool  # noqa: E402
from mmengine.config import Config  # noqa: E402

import visionattn  # noqa: E402,F401
from visionattn.engine import MODELS  # noqa: E402

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
DIGITS = 'configs/classification/resnet_attn_digits.py'
SEGMENTATION = 'configs/segmentation/fpn_resnet_attn_synthetic_shapes.py'
TINY = ['train_dataloader.dataset.max_samples=64', 'val_dataloader.dataset.max_samples=32',
        'test_dataloader.dataset.max_samples=32', 'train_dataloader.batch_size=16',
        'default_hooks.checkpoint.interval=1', 'train_cfg.val_interval=1', 'default_hooks.logger.interval=1',
        'train_cfg.max_epochs=2']


@pytest.fixture(scope='module')
def publish_tool():
    return load_tool('publish')


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    """Two tiny epochs of the digits config (the EMA starts in the second): the work dir and the run's output."""
    work = tmp_path_factory.mktemp('digits') / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    env.pop('PYTEST_XDIST_WORKER', None)
    proc = subprocess.run([sys.executable, 'tools/train.py', DIGITS, '--work-dir', str(work), '--cfg-options', *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc.stdout + proc.stderr


def test_training_logs_are_quiet(digits_run):
    # Issue 22: seven "Failed to search registry with scope visionattn" warnings and a requires_grad warning per run.
    _, output = digits_run
    assert 'Failed to search registry' not in output
    assert 'requires_grad=True to a scalar' not in output


def test_checkpoints_are_plain_data(digits_run):
    # No numpy objects: torch's weights-only loader reads them without any allow-list.
    work, _ = digits_run
    checkpoint = torch.load(work / 'epoch_2.pth', weights_only=True)
    assert {'state_dict', 'ema_state_dict', 'message_hub', 'rng_states'} <= set(checkpoint)


def _engine_model(state):
    model = MODELS.build(Config.fromfile(DIGITS).model).eval()
    model.load_state_dict(state, strict=True)
    return model


def _timm_outputs(model, images):
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ('mean', 'std'))
    with torch.no_grad():
        return model((images.float() / 255 - mean) / std)


def test_published_digits_model_equals_the_engine_model(digits_run, publish_tool, tmp_path):
    from visionattn.engine import load_training_checkpoint
    work, _ = digits_run
    checkpoint = load_training_checkpoint(work / 'epoch_2.pth')
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    outputs = {}
    for ema, state in ((False, {**checkpoint['state_dict'], **{k[7:]: v for k, v in checkpoint['ema_state_dict'].items()
                                                                if k.startswith('module.')}}),
                       (True, checkpoint['state_dict'])):  # mmengine keeps the EMA in state_dict
        out = tmp_path / f'digits_ema{int(ema)}'
        publish_tool.main([DIGITS, str(work / 'epoch_2.pth'), str(out)] + (['--ema'] if ema else []))
        assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
        model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
        engine = _engine_model(state)
        # The same preprocessing: the exported mean/std are the ones the engine normalised with.
        torch.testing.assert_close(torch.tensor(model.pretrained_cfg['mean']) * 255,
                                   engine.data_preprocessor.mean.flatten(), rtol=0, atol=1e-4)
        assert tuple(model.pretrained_cfg['input_size']) == (3, 32, 32)
        inputs = engine.data_preprocessor({'inputs': images, 'data_samples': None})['inputs']
        with torch.no_grad():
            torch.testing.assert_close(model(inputs), engine(inputs, mode='tensor'))
            torch.testing.assert_close(_timm_outputs(model, images), engine(inputs, mode='tensor'), rtol=1e-4,
                                       atol=1e-4)
        outputs[ema] = model(inputs)
        config = json.loads((out / 'config.json').read_text())
        assert config['architecture'] == 'eca_resnet18' and config['num_classes'] == 10
        card = (out / 'README.md').read_text()
        from visionattn.integrity import sha256_file
        assert sha256_file(out / 'model.safetensors') in card
        assert 'license: mit' in card and 'accuracy/top1' in card
        assert "type='visionattn.heads.classification.task.ImageClassifier'" in card
    assert not torch.allclose(outputs[False], outputs[True]), '--ema published the same weights'


def test_publish_output_is_what_push_to_hf_hub_uploads(digits_run, publish_tool, tmp_path, monkeypatch):
    import timm.models._hub as hub
    work, _ = digits_run
    uploaded = tmp_path / 'hub'

    class FakeHfApi:  # what push_to_hf_hub calls on huggingface_hub's HfApi; nothing leaves the machine
        def __init__(self, **kwargs):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            return SimpleNamespace(repo_id=repo_id)

        def file_exists(self, repo_id, filename, revision=None):
            return False

        def upload_folder(self, repo_id, folder_path, revision=None, create_pr=False, commit_message=''):
            shutil.copytree(folder_path, uploaded / repo_id)
            return f'uploaded {repo_id}'

    monkeypatch.setattr(hub, 'HfApi', FakeHfApi)
    out = tmp_path / 'out'
    publish_tool.main([DIGITS, str(work / 'epoch_2.pth'), str(out), '--push-to-hub', 'someone/eca_digits'])
    sent = uploaded / 'someone' / 'eca_digits'
    assert sorted(p.name for p in sent.iterdir()) == sorted(p.name for p in out.iterdir())
    for path in out.iterdir():
        assert (sent / path.name).read_bytes() == path.read_bytes(), f'{path.name} differs from what was uploaded'

    # ... and timm.create_model("hf-hub:...") reads it back (the hub's download served from the upload).
    def fake_download(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        return str(uploaded / repo_id / filename)
    monkeypatch.setattr(hub, 'hf_hub_download', fake_download)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        from_hub = timm.create_model('hf-hub:someone/eca_digits', pretrained=True).eval()(x)
        local = timm.create_model(f'local-dir:{out}', pretrained=True).eval()(x)
    torch.testing.assert_close(from_hub, local, rtol=0, atol=0)


@pytest.mark.parametrize('backbone', ['eca_resnet18', 'nat_mini'])
def test_segmentor_backbone_goes_back_into_timm(publish_tool, tmp_path, backbone):
    # FeatureListNet (ECA-ResNet) and FeatureGetterNet with NAT's features_only-only per-level norms.
    cfg = Config.fromfile(SEGMENTATION)
    cfg.model.network.backbone = backbone
    torch.manual_seed(0)
    task = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        for value in task.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.05)  # "trained": unlike any initialisation
    path = tmp_path / 'iter_10.pth'
    torch.save({'meta': {'epoch': 0, 'iter': 10}, 'state_dict': task.state_dict(), 'message_hub': {}}, path)
    out = tmp_path / 'backbone'
    published = publish_tool.main([SEGMENTATION, str(path), str(out), '--backbone-only', '--cfg-options',
                                   f'model.network.backbone={backbone}'])
    assert published.source_module == 'network.backbone.model'
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = timm.create_model(f'local-dir:{out}', pretrained=True, features_only=True).eval()(x)
        expected = task.network.backbone.model(x)
    assert len(features) == len(expected)
    for got, want in zip(features, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    plain = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert plain.num_classes == 0
    card = (out / 'README.md').read_text()
    assert all(f'`{key}`' in card for key in published.left_at_init)  # what the extractor never held is listed


def test_refusals_name_the_way_out(digits_run, publish_tool, tmp_path):
    work, _ = digits_run
    out = tmp_path / 'taken'
    out.mkdir()
    (out / 'keep.txt').write_text('x')
    with pytest.raises(SystemExit, match='not empty.*--force'):
        publish_tool.main([DIGITS, str(work / 'epoch_2.pth'), str(out)])
    cfg = Config.fromfile(SEGMENTATION)
    task = MODELS.build(cfg.model)
    path = tmp_path / 'seg.pth'
    torch.save({'meta': {}, 'state_dict': task.state_dict(), 'message_hub': {}}, path)
    with pytest.raises(SystemExit, match='not a classifier.*--backbone-only'):
        publish_tool.main([SEGMENTATION, str(path), str(tmp_path / 'seg')])
    with pytest.raises(SystemExit, match='no EMA weights'):
        publish_tool.main([SEGMENTATION, str(path), str(tmp_path / 'seg'), '--backbone-only', '--ema'])


def test_a_plain_state_dict_is_named_briefly(tmp_path):
    # Adversarial probe: a plain state dict printed every one of its keys in one line.
    path = tmp_path / 'plain.pth'
    torch.save(timm.create_model('resnet18').state_dict(), path)
    proc = subprocess.run([sys.executable, 'tools/publish.py', 'configs/classification/resnet_attn_digits.py',
                           str(path), str(tmp_path / 'out')], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert 'a plain state dict?' in proc.stderr and '(' in proc.stderr and 'more)' in proc.stderr
    assert len(proc.stderr.splitlines()[-1]) < 600


TINY_BACKBONE = ['--cfg-options', 'model.backbone=test_resnet']


def _tiny_checkpoint(path, ema=False):
    """A digits checkpoint of timm's test_resnet, as tools/train.py saves one (with EMAHook: the EMA in state_dict, the
    trained weights under module. in ema_state_dict); its last validation after this checkpoint's iteration."""
    cfg = Config.fromfile(DIGITS)
    cfg.model.backbone = 'test_resnet'
    torch.manual_seed(0)
    trained = MODELS.build(cfg.model).state_dict()
    checkpoint = {'meta': {'epoch': 2, 'iter': 8}, 'message_hub': {}, 'state_dict': trained,
                  'training_curves': {'val': [{'epoch': 2, 'iter': 8, 'accuracy/top1': 71.5}]}}
    if ema:
        checkpoint['state_dict'] = {k: v + 0.01 if v.is_floating_point() else v for k, v in trained.items()}
        checkpoint['ema_state_dict'] = {'steps': torch.tensor(8), **{f'module.{k}': v for k, v in trained.items()}}
    torch.save(checkpoint, path)


def test_force_replaces_only_an_earlier_publish(publish_tool, tmp_path, monkeypatch):
    # Adversarial probe: --force deleted whatever OUT_DIR held: publishing into the run's work dir deleted its
    # checkpoints (the one being published too), OUT_DIR = the checkpoint replaced it by a folder, and an empty
    # current folder as OUT_DIR failed in a ValueError (PosixPath('.') has an empty name).
    work = tmp_path / 'work dir'
    work.mkdir()
    _tiny_checkpoint(work / 'epoch_2.pth')
    (work / '20250101_000000.log').write_text('log')
    args = [str(ROOT / DIGITS), str(work / 'epoch_2.pth')]  # the test changes folder below
    with pytest.raises(SystemExit, match=r"--force replaces only an earlier publish's folder.*holds 20250101_000000"
                                         r"\.log, epoch_2\.pth"):
        publish_tool.main([*args, str(work), '--force', *TINY_BACKBONE])
    with pytest.raises(SystemExit, match='exists and is not a folder'):
        publish_tool.main([*args, str(work / 'epoch_2.pth'), '--force', *TINY_BACKBONE])
    assert sorted(p.name for p in work.iterdir()) == ['20250101_000000.log', 'epoch_2.pth']
    assert (work / 'epoch_2.pth').is_file()
    empty = tmp_path / 'empty'
    empty.mkdir()
    monkeypatch.chdir(empty)
    with pytest.raises(SystemExit, match='is the current folder'):
        publish_tool.main([*args, '.', *TINY_BACKBONE])
    # an earlier publish is what --force replaces
    out = tmp_path / 'published'
    publish_tool.main([*args, str(out), *TINY_BACKBONE])
    first = (out / 'model.safetensors').read_bytes()
    publish_tool.main([*args, str(out), '--force', *TINY_BACKBONE])
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert (out / 'model.safetensors').read_bytes() == first


def test_card_says_a_half_precision_checkpoint_was_widened(publish_tool, tmp_path):
    # Adversarial probe: a checkpoint saved in bfloat16 was published as float32 without a word.
    path = tmp_path / 'epoch_2.pth'
    _tiny_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['state_dict'] = {k: v.bfloat16() if v.is_floating_point() else v
                                for k, v in checkpoint['state_dict'].items()}
    torch.save(checkpoint, tmp_path / 'bf16.pth')
    publish_tool.main([DIGITS, str(tmp_path / 'bf16.pth'), str(tmp_path / 'bf16'), *TINY_BACKBONE])
    assert 'stored these weights in bfloat16; published in the model\'s float32' in \
        (tmp_path / 'bf16' / 'README.md').read_text()
    publish_tool.main([DIGITS, str(path), str(tmp_path / 'fp32'), *TINY_BACKBONE])
    assert 'Precision' not in (tmp_path / 'fp32' / 'README.md').read_text()


def test_card_of_an_ema_run_says_whose_metrics_it_shows(publish_tool, tmp_path):
    # Adversarial probe: an EMAHook run validates its EMA; publishing the trained weights (the default) showed the
    # EMA's validation metrics in the card as if they were these weights' numbers.
    path = tmp_path / 'epoch_2.pth'
    _tiny_checkpoint(path, ema=True)
    trained = publish_tool.main([DIGITS, str(path), str(tmp_path / 'trained'), *TINY_BACKBONE])
    averaged = publish_tool.main([DIGITS, str(path), str(tmp_path / 'ema'), '--ema', *TINY_BACKBONE])
    card = (tmp_path / 'trained' / 'README.md').read_text()
    assert 'accuracy/top1: 71.5' in card and 'of the EMA of the weights, not of these trained weights' in card
    assert '--ema' in trained.weights
    card = (tmp_path / 'ema' / 'README.md').read_text()
    assert 'accuracy/top1: 71.5' in card and 'not of these' not in card
    assert 'moving average' in averaged.weights
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the two folders hold the two sets of weights
        assert not torch.equal(*(timm.create_model(f'local-dir:{tmp_path / d}', pretrained=True).eval()(x)
                                 for d in ('trained', 'ema')))
