"""tools/convert.py and the official Focus-DETR weights: checkpoints written in the official key layout (from the
layout builder of tests/test_focus_detr.py, with a small transformer so the files stay small), as a .pth, inside a
release .zip and served from the loopback server, converted and loaded strictly; corrupted, unsafe and mismatched
files fail with messages that name the problem. Models are built on the meta device."""
import dataclasses
import importlib.util
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from test_focus_detr import _official_layout
from test_hub import official_checkpoint, official_eca_model
from visionattn.heads.detection import FOCUS_DETR_WEIGHTS, FocusDETR, load_focus_detr_official
from visionattn.heads.detection import weights as weights_module

from visionattn.hub import CheckpointError, CheckpointMismatchError, extract_checkpoint, load_checkpoint_file

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
# official-layout sizes and the matching FocusDETR arguments (R50 backbone as official, a small transformer)
LAYOUT = dict(num_classes=3, embed=64, ffn=128, enc_layers=2, dec_layers=2, queries=20)
MODEL = dict(num_classes=3, embed_dims=64, num_queries=20,
             encoder=dict(num_layers=2, ffn_dims=128, cascade_ratios=(1.0, 0.5)),
             decoder=dict(num_layers=2, ffn_dims=128))


def _tool():
    spec = importlib.util.spec_from_file_location('convert_tool', ROOT / 'tools' / 'convert.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_state(**overrides):
    """An official-layout state dict: zeros, a few known tensors, the aliased heads sharing their target's tensor
    (as the official model saves them)."""
    layout = _official_layout(**{**LAYOUT, **overrides})
    state = {}
    for key, (shape, _, alias) in layout.items():
        state[key] = state[alias] if alias is not None else torch.zeros(shape)
    torch.manual_seed(0)
    for key in ('backbone.res2.0.conv1.weight', 'backbone.res4.5.conv2.norm.running_var', 'transformer.alpha',
                'class_embed.2.weight', 'backbone.stem.conv1.norm.bias'):
        state[key].copy_(torch.rand_like(state[key]))
    return state


def official_file(path, state=None):
    """A detectron2 Checkpointer file: the weights under 'model' plus the trainer's plain state."""
    state = official_state() if state is None else state
    torch.save({'model': state, 'trainer': {'iteration': 89999, 'hooks': {}}, 'iteration': 89999}, path)
    return state


def meta_model(**overrides):
    with torch.device('meta'):
        return FocusDETR('resnet50', **{**MODEL, **overrides})


def assert_converted(state, official):
    assert torch.equal(state['backbone.model.layer1.0.conv1.weight'], official['backbone.res2.0.conv1.weight'])
    assert torch.equal(state['backbone.model.layer3.5.bn2.running_var'],
                       official['backbone.res4.5.conv2.norm.running_var'])
    assert torch.equal(state['backbone.model.bn1.bias'], official['backbone.stem.conv1.norm.bias'])
    assert torch.equal(state['transformer.alpha'], official['transformer.alpha'])
    assert torch.equal(state['class_embed.2.weight'], official['class_embed.2.weight'])


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_tool_converts_the_official_layout_and_the_result_loads_strictly(tmp_path, suffix, capsys):
    official = official_file(tmp_path / 'model_final.pth')
    out = tmp_path / 'out' / f'focus_detr{suffix}'
    summary = _tool().main(['focus_detr', str(tmp_path / 'model_final.pth'), str(out)])
    assert "FocusDETR('resnet50', num_classes=3" in summary['model']
    assert "encoder={'num_layers': 2" in summary['model'] and "decoder={'num_layers': 2" in summary['model']
    assert summary['format'] == ('safetensors' if suffix == '.safetensors' else 'torch.save state dict')
    assert summary['renamed'] == sum(k.startswith('backbone.') for k in official)
    assert summary['dropped'] == sum(k.startswith(('transformer.decoder.class_embed', 'transformer.decoder.bbox_embed',
                                                   'transformer.encoder.enhance_MCSP', 'enhance_MCSP_layerlist'))
                                     for k in official)
    assert not list(out.parent.glob('.*tmp'))  # the temporary file was renamed away
    assert 'every key and shape' in capsys.readouterr().out
    state = load_checkpoint_file(out)
    assert_converted(state, official)
    model = meta_model()
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_release_zip_served_over_loopback_loads_by_name(weight_server, monkeypatch):
    served = Path(weight_server.root)
    official = official_file(served / 'model_final.pth')
    archive = served / 'focus_detr_r50_4scale_12ep.zip'
    with zipfile.ZipFile(archive, 'w') as z:
        z.write(served / 'model_final.pth', 'focus_detr_r50_4scale_12ep/model_final.pth')
        z.writestr('focus_detr_r50_4scale_12ep/config.yaml', 'model: {}\n')
    entry = FOCUS_DETR_WEIGHTS['focus_detr_r50_4scale_12ep']
    monkeypatch.setitem(FOCUS_DETR_WEIGHTS, 'focus_detr_r50_4scale_12ep',
                        dataclasses.replace(entry, url=weight_server.url(archive.name)))
    model = load_focus_detr_official(meta_model(), 'focus_detr_r50_4scale_12ep', progress=False)
    assert_converted(model.state_dict(), official)
    assert weight_server.requests == ['/focus_detr_r50_4scale_12ep.zip']
    # the second time comes from the cache, and the tool takes the URL too
    load_focus_detr_official(meta_model(), 'focus_detr_r50_4scale_12ep', progress=False)
    summary = _tool().main(['focus_detr', weight_server.url(archive.name), str(served.parent / 'out.safetensors')])
    assert weight_server.requests == ['/focus_detr_r50_4scale_12ep.zip']
    assert summary['input'].endswith('model_final.pth')


def test_archives_are_checked_before_anything_is_unpacked(tmp_path):
    torch.save({'w': torch.ones(2)}, tmp_path / 'w.pth')
    assert extract_checkpoint(tmp_path / 'w.pth') == tmp_path / 'w.pth'  # torch.save's own zip: returned as it is
    cases = {'evil.zip': (['../../evil.pth'], 'outside its folder'), 'abs.zip': (['/tmp/evil.pth'], 'absolute'),
             'none.zip': (['README.txt'], 'holds no checkpoint'), 'two.zip': (['a.pth', 'b/c.pth'], 'several')}
    for name, (members, message) in cases.items():
        with zipfile.ZipFile(tmp_path / name, 'w') as z:
            for m in members:  # ZipInfo keeps the name as given (ZipFile.write would sanitise it)
                z.writestr(zipfile.ZipInfo(m), (tmp_path / 'w.pth').read_bytes())
        with pytest.raises(CheckpointError, match=message):
            extract_checkpoint(tmp_path / name)
    assert not (tmp_path.parent / 'evil.pth').exists() and not Path('/tmp/evil.pth').exists()
    picked = extract_checkpoint(tmp_path / 'two.zip', member='c.pth')
    assert picked == tmp_path / 'two' / 'c.pth' and torch.equal(load_checkpoint_file(picked)['w'], torch.ones(2))


def test_corrupted_files_are_named(tmp_path):
    official_file(tmp_path / 'full.pth')
    data = (tmp_path / 'full.pth').read_bytes()
    (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(SystemExit, match='cut.pth is truncated or corrupted'):
        _tool().main(['focus_detr', str(tmp_path / 'cut.pth'), str(tmp_path / 'out.pth')])
    with zipfile.ZipFile(tmp_path / 'release.zip', 'w') as z:
        z.write(tmp_path / 'full.pth', 'release/model_final.pth')
    archive = (tmp_path / 'release.zip').read_bytes()
    (tmp_path / 'release_cut.zip').write_bytes(archive[:len(archive) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupted'):
        load_focus_detr_official(meta_model(), tmp_path / 'release_cut.zip')
    assert not (tmp_path / 'out.pth').exists()


def test_mismatched_checkpoints_name_the_keys(tmp_path):
    official = official_file(tmp_path / 'model_final.pth')
    with pytest.raises(CheckpointMismatchError, match=r'class_embed\.0\.weight: checkpoint \(3, 64\) vs model '
                                                      r'\(4, 64\)(.|\n)*hint: the official COCO checkpoints have '
                                                      r'num_classes=80'):
        load_focus_detr_official(meta_model(num_classes=4), tmp_path / 'model_final.pth')
    with pytest.raises(CheckpointMismatchError, match=r'missing keys \(\d+\): backbone\.model\.bn1\.num_batches_'
                                                      r'tracked(.|\n)*freeze_bn=True'):
        load_focus_detr_official(meta_model(freeze_bn=False), tmp_path / 'model_final.pth')
    del official['transformer.alpha']
    official['transformer.extra'] = torch.zeros(1)
    official_file(tmp_path / 'edited.pth', official)
    with pytest.raises(CheckpointMismatchError, match=r'missing keys \(1\): transformer\.alpha\n  unexpected keys '
                                                      r'\(1\): transformer\.extra'):
        load_focus_detr_official(meta_model(), tmp_path / 'edited.pth')
    with pytest.raises(SystemExit, match=r'missing keys \(1\): transformer\.alpha'):
        _tool().main(['focus_detr', str(tmp_path / 'edited.pth'), str(tmp_path / 'out.pth')])
    with pytest.raises(SystemExit, match='--num-classes 80 but the checkpoint'):
        _tool().main(['focus_detr', str(tmp_path / 'model_final.pth'), str(tmp_path / 'out.pth'),
                      '--num-classes', '80'])
    assert not (tmp_path / 'out.pth').exists()


def test_swin_releases_are_refused_before_downloading(tmp_path, weight_server):
    for name, entry in FOCUS_DETR_WEIGHTS.items():
        if entry.timm_backbone is None:
            with pytest.raises(CheckpointError, match='norm1..3'):
                load_focus_detr_official(meta_model(), name)
    assert weight_server.requests == []
    swin = {'backbone.patch_embed.proj.weight': torch.zeros(96, 3, 4, 4), 'backbone.norm1.weight': torch.zeros(192),
            'transformer.level_embeds': torch.zeros(4, 256), 'class_embed.0.weight': torch.zeros(80, 256)}
    torch.save({'model': swin}, tmp_path / 'swin.pth')
    with pytest.raises(CheckpointError, match='Swin'):
        load_focus_detr_official(meta_model(), tmp_path / 'swin.pth')
    with pytest.raises(SystemExit, match='Swin'):
        _tool().main(['focus_detr', str(tmp_path / 'swin.pth'), str(tmp_path / 'out.pth')])
    with pytest.raises(CheckpointError, match='unknown Focus-DETR release'):
        load_focus_detr_official(meta_model(), 'focus_detr_r18_4scale_12ep')


def test_the_weights_table_is_the_official_readme():
    ap = {name: (e.backbone, e.pretrain, e.epochs, e.box_ap) for name, e in FOCUS_DETR_WEIGHTS.items()}
    assert ap == {
        'focus_detr_r50_4scale_12ep': ('R-50', 'IN1k', 12, 48.8),
        'focus_detr_r50_4scale_24ep': ('R-50', 'IN1k', 24, 50.3),
        'focus_detr_r50_4scale_36ep': ('R-50', 'IN1k', 36, 50.4),
        'focus_detr_r101_4scale_12ep': ('R-101', 'IN1k', 12, 50.8),
        'focus_detr_r101_4scale_24ep': ('R-101', 'IN1k', 24, 51.2),
        'focus_detr_r101_4scale_36ep': ('R-101', 'IN1k', 36, 51.4),
        'focus_detr_swin_tiny_224_4scale_12ep': ('Swin-Tiny-224', 'IN1k', 12, 50.0),
        'focus_detr_swin_tiny_224_4scale_24ep': ('Swin-Tiny-224', 'IN1k', 24, 51.2),
        'focus_detr_swin_tiny_224_4scale_36ep': ('Swin-Tiny-224', 'IN1k', 36, 52.5),
        'focus_detr_swin_tiny_224_4scale_22k_36ep': ('Swin-Tiny-224', 'IN22k to IN1k', 36, 53.2),
        'focus_detr_swin_base_384_4scale_22k_36ep': ('Swin-Base-384', 'IN22k to IN1k', 36, 56.2),
        'focus_detr_swin_large_384_4scale_22k_36ep': ('Swin-Large-384', 'IN22k to IN1k', 36, 56.3),
    }
    for name, e in FOCUS_DETR_WEIGHTS.items():
        assert e.url.startswith('https://github.com/') or (e.url == '' and 'no file' in e.note)
        assert e.timm_backbone == {'R-50': 'resnet50', 'R-101': 'resnet101'}.get(e.backbone)
    assert FOCUS_DETR_WEIGHTS['focus_detr_r50_4scale_36ep'].url.endswith('_36ep_v3.zip')
    assert weights_module.create_focus_detr_official.__doc__


def test_r101_layout_infers_the_backbone_depth(tmp_path):
    official = official_state()
    blocks = [k for k in official if k.startswith('backbone.res4.5.')]
    for i in range(6, 23):  # R101: 23 res4 blocks of the same shapes as res4.1-5
        for k in blocks:
            official[k.replace('res4.5.', f'res4.{i}.')] = official[k].clone()
    official_file(tmp_path / 'r101.pth', official)
    summary = _tool().main(['focus_detr', str(tmp_path / 'r101.pth'), str(tmp_path / 'r101.safetensors')])
    assert "FocusDETR('resnet101'" in summary['model']
    with torch.device('meta'):
        model = FocusDETR('resnet101', **MODEL)
    model.load_state_dict(load_checkpoint_file(tmp_path / 'r101.safetensors'), strict=True, assign=True)


def test_backbone_family_goes_through_its_checkpoint_filter(tmp_path):
    torch.save(official_checkpoint(official_eca_model('eca_resnet18'), 'eca_resnet18'), tmp_path / 'eca.pth.tar')
    summary = _tool().main(['eca_resnet18', str(tmp_path / 'eca.pth.tar'), str(tmp_path / 'eca.safetensors')])
    assert summary['model'] == "timm.create_model('eca_resnet18')"
    state = load_checkpoint_file(tmp_path / 'eca.safetensors')
    assert 'layer1.0.se.conv.weight' in state and not any(k.startswith('module.') for k in state)
    with torch.device('meta'):
        model = timm.create_model('eca_resnet18')
    model.load_state_dict(state, strict=True, assign=True)
    with pytest.raises(SystemExit, match='unknown family'):
        _tool().main(['no_such_family', str(tmp_path / 'eca.pth.tar'), str(tmp_path / 'x.pth')])


def test_two_weight_sets_are_named_and_ema_chooses(tmp_path, capsys):
    # A checkpoint with the trained weights and their EMA (timm's train.py saves both) was converted from the first
    # without a word; either may be the one a paper reports. Now the choice is printed and --ema takes the EMA's.
    trained, averaged = official_eca_model('eca_resnet18').state_dict(), {}
    for k, v in trained.items():
        averaged[k] = v + 1 if v.is_floating_point() else v
    path = tmp_path / 'both.pth.tar'
    torch.save({'epoch': 3, 'state_dict': trained, 'state_dict_ema': averaged}, path)
    key = 'layer1.0.se.conv.weight'
    summary = _tool().main(['eca_resnet18', str(path), str(tmp_path / 'a.safetensors')])
    assert "not their EMA 'state_dict_ema'" in capsys.readouterr().out and summary['weights_note']
    assert torch.equal(load_checkpoint_file(tmp_path / 'a.safetensors')[key], trained['layer1.0.eca.conv.weight'])
    summary = _tool().main(['eca_resnet18', str(path), str(tmp_path / 'b.safetensors'), '--ema'])
    assert torch.equal(load_checkpoint_file(tmp_path / 'b.safetensors')[key], averaged['layer1.0.eca.conv.weight'])
    torch.save({'state_dict': trained}, tmp_path / 'plain.pth')
    assert _tool().main(['eca_resnet18', str(tmp_path / 'plain.pth'), str(tmp_path / 'c.pth')])['weights_note'] is None
    with pytest.raises(SystemExit, match='--ema: the checkpoint holds no EMA weights'):
        _tool().main(['eca_resnet18', str(tmp_path / 'plain.pth'), str(tmp_path / 'd.pth'), '--ema'])


def test_a_training_checkpoint_points_to_publish(tmp_path):
    # Issue 22: convert.py refused a tools/train.py checkpoint for its numpy objects; now it reads the weights and
    # names the tool that exports them (the task model's prefixes are not an official layout to convert).
    import numpy as np
    official = official_eca_model('eca_resnet18')
    path = tmp_path / 'epoch_6.pth'
    torch.save({'meta': {'epoch': 6}, 'message_hub': {'runtime_info': {'eta': np.float64(1.0)}}, 'optimizer': {},
                'state_dict': {f'classifier.{k}': v for k, v in official.state_dict().items()}}, path)
    with pytest.raises(SystemExit, match=r'(?s)does not fit.*tools/publish\.py CONFIG CHECKPOINT OUT_DIR'):
        _tool().main(['eca_resnet18', str(path), str(tmp_path / 'out.safetensors')])


@pytest.mark.parametrize('options, message', [
    (['out.txt'], 'must end in .safetensors or .pth'),
    (['a_folder.pth'], 'is a folder'),
    (['out.pth', '--num-heads', '3'], '--num-heads 3: only for focus_detr'),
    (['out.pth', '--member', 'x.pth'], 'is not one'),
    (['out.pth', '--num-classes', '-3'], '--num-classes -3 must be at least 0'),
])
def test_options_that_would_do_nothing_are_refused(tmp_path, monkeypatch, capsys, options, message):
    # Adversarial probe: these were taken and did nothing (or failed in a traceback after the conversion).
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'a_folder.pth').mkdir()
    with pytest.raises(SystemExit):
        _tool().main(['eca_resnet18', 'eca.pth.tar', options[0], *options[1:]])
    assert message in capsys.readouterr().err


def test_an_existing_output_is_replaced_only_with_force_and_never_the_input(tmp_path, capsys):
    # Adversarial probe: OUT = IN replaced the official checkpoint by its conversion, and any existing file at OUT was
    # overwritten without a word (publish.py refuses a non-empty OUT_DIR without --force).
    official = tmp_path / 'eca official.pth'
    torch.save(official_checkpoint(official_eca_model('eca_resnet18'), 'eca_resnet18'), official)
    original = official.read_bytes()
    for extra in ([], ['--force']):
        with pytest.raises(SystemExit):
            _tool().main(['eca_resnet18', str(official), str(official), *extra])
        assert 'is the input checkpoint' in capsys.readouterr().err
    assert official.read_bytes() == original and not (tmp_path / 'eca official.pth.sha256').exists()
    taken = tmp_path / 'notes.pth'
    taken.write_text('not a conversion')
    with pytest.raises(SystemExit):
        _tool().main(['eca_resnet18', str(official), str(taken)])
    assert 'exists; pass another OUT or --force' in capsys.readouterr().err and taken.read_text() == 'not a conversion'
    _tool().main(['eca_resnet18', str(official), str(taken), '--force'])
    with torch.device('meta'):
        model = timm.create_model('eca_resnet18')
    model.load_state_dict(load_checkpoint_file(taken), strict=True, assign=True)
