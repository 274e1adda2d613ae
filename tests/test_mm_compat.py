"""The zoo backbones in OpenMMLab's registries.

mmdet/mmseg need a full mmcv build, which CI does not make (see visionattn.heads.mm_compat): where the toolbox
imports, the registration is built through its registry; otherwise the error must name the missing module. The
plugins' import-time registration and their error messages are also checked against stand-in toolbox packages, and
ZooBackbone's mmdet-style options (frozen_stages, norm_eval, init_cfg Pretrained) on tiny CPU models.
"""
import importlib
import sys

import pytest
import timm
import torch
from mmengine.registry import MODELS as MMENGINE_MODELS
from visionattn.heads.mm_compat import TIMM_BACKBONE_KWARGS, ZooBackbone, register_zoo_backbone

import visionattn  # noqa: F401  (registers the zoo with timm: the TIMMBackbone route)
from visionattn.hub import CheckpointMismatchError

pytestmark = pytest.mark.heads

REGISTER = {'mmdet': ('visionattn.heads.detection.mmdet_compat', 'register_mmdet_backbones'),
            'mmseg': ('visionattn.heads.segmentation.mmseg_compat', 'register_mmseg_backbones')}


def _import_error(*modules: str):
    """The ImportError the first of ``modules`` that fails raises, else None."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as error:
        return error
    return None


@pytest.mark.parametrize('toolbox', sorted(REGISTER))
def test_zoo_backbone_registration(toolbox):
    module_name, function = REGISTER[toolbox]
    error = _import_error(f'{toolbox}.registry', f'{toolbox}.models')
    if error is not None:
        expected = 'full mmcv build' if (error.name or '').startswith('mmcv._ext') else repr(error.name)
        with pytest.raises(ImportError, match=expected.replace('.', r'\.')):
            getattr(importlib.import_module(module_name), function)()
        pytest.skip(f'{toolbox} does not import here (missing {error.name!r}; it needs a full mmcv build, which CI '
                    'does not make): checked the error only')
    getattr(importlib.import_module(module_name), function)(force=True)
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    backbone = registry.build(dict(type='ZooBackbone', model_name='resnet18', out_indices=(1, 2, 3)))
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(backbone.channels) == [128, 256, 512]


def test_unknown_toolbox_is_named():
    with pytest.raises(ValueError, match='unknown toolbox'):
        register_zoo_backbone('mmpose')


# --- the plugins' import against stand-in toolboxes ---------------------------------------------------------------

@pytest.fixture
def standin(tmp_path, monkeypatch):
    """Make ``import <toolbox>`` find a stand-in package whose models module runs ``models_source``."""
    def make(toolbox: str, models_source: str = ''):
        root = tmp_path / toolbox
        (root / 'models').mkdir(parents=True)
        (root / '__init__.py').write_text('')
        (root / 'registry.py').write_text(
            f'from mmengine.registry import Registry\nMODELS = Registry("model", scope="standin_{toolbox}")\n')
        (root / 'models' / '__init__.py').write_text(models_source)
        for name in [m for m in sys.modules if m == toolbox or m.startswith(toolbox + '.')]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.delitem(sys.modules, REGISTER[toolbox][0], raising=False)
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        return root
    yield make
    for toolbox in REGISTER:  # drop what the stand-ins imported
        for name in [m for m in sys.modules if m == toolbox or m.startswith(toolbox + '.')]:
            sys.modules.pop(name)
        sys.modules.pop(REGISTER[toolbox][0], None)


@pytest.mark.parametrize('toolbox', sorted(REGISTER))
def test_importing_the_plugin_registers_where_the_toolbox_looks(standin, toolbox):
    standin(toolbox)
    importlib.import_module(REGISTER[toolbox][0])  # what a config's custom_imports does
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    assert registry.module_dict.get('ZooBackbone') is ZooBackbone  # its own registry, not only mmengine's root
    backbone = registry.build(dict(type='ZooBackbone', model_name='resnet18', out_indices=(2, 3)))
    assert [f.shape[1] for f in backbone(torch.randn(1, 3, 64, 64))] == [128, 256]


@pytest.mark.parametrize('toolbox', sorted(REGISTER))
@pytest.mark.parametrize('source, expected, not_expected', [
    ('import ftfy\n', "'ftfy'", 'full mmcv'),
    ('raise ModuleNotFoundError("No module named \'mmcv._ext\'", name="mmcv._ext")\n', 'full mmcv build', 'ftfy'),
])
def test_import_error_names_the_missing_module(standin, monkeypatch, toolbox, source, expected, not_expected):
    monkeypatch.setitem(sys.modules, 'ftfy', None)  # missing, even where it is installed
    standin(toolbox, source)
    with pytest.raises(ImportError) as info:
        importlib.import_module(REGISTER[toolbox][0])
    assert expected in str(info.value) and not_expected not in str(info.value).split('(ModuleNotFoundError')[0]
    assert toolbox in str(info.value)


def test_mmengine_root_registry_builds_zoo_backbone():
    backbone = MMENGINE_MODELS.build(dict(type='ZooBackbone', model_name='resnet18', out_indices=(1, 2)))
    assert isinstance(backbone, ZooBackbone) and backbone.out_indices == (1, 2)


# --- frozen_stages, norm_eval -------------------------------------------------------------------------------------

def _under(name, prefixes):
    return any(name.startswith(f'features.model.{p}.') for p in prefixes)


@pytest.mark.parametrize('frozen_stages, frozen_modules', [(-1, ()), (0, ('conv1', 'bn1')),
                                                           (1, ('conv1', 'bn1', 'layer1')),
                                                           (2, ('conv1', 'bn1', 'layer1', 'layer2'))])
def test_frozen_stages_freeze_exactly_the_stem_and_first_stages(frozen_stages, frozen_modules):
    torch.manual_seed(0)
    backbone = ZooBackbone('resnet18', frozen_stages=frozen_stages)
    for module in backbone.modules():  # timm zero-inits each block's last BN, which would stop gradients
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    expected = {n for n, _ in backbone.named_parameters() if _under(n, frozen_modules)}
    assert {n for n, p in backbone.named_parameters() if not p.requires_grad} == expected
    backbone.train()
    for name, module in backbone.named_modules():
        if name.startswith('features.model.') and name.count('.') == 2:
            assert module.training == (name.split('.')[2] not in frozen_modules), name
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    stats = {n: b.clone() for n, b in backbone.named_buffers() if 'running_mean' in n}
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.1)
    sum(f.square().mean() for f in backbone(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()
    for name, param in backbone.named_parameters():
        assert torch.equal(param, before[name]) == (name in expected), name
    for name, buf in backbone.named_buffers():
        if 'running_mean' in name:
            assert torch.equal(buf, stats[name]) == _under(name, frozen_modules), name


def test_frozen_stages_on_a_zoo_family_and_range():
    backbone = ZooBackbone('patnet_t0', frozen_stages=0)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and frozen == {n for n, _ in backbone.named_parameters() if '.patch_embed.' in n}
    assert backbone.stage_modules == ['stages.0', 'stages.1', 'stages.2', 'stages.3']
    with pytest.raises(ValueError, match='frozen_stages=5 is out of range'):
        ZooBackbone('resnet18', frozen_stages=5)


@pytest.mark.parametrize('norm_eval', [False, True])
def test_norm_eval_keeps_batchnorm_statistics(norm_eval):
    backbone = ZooBackbone('resnet18', out_indices=(1, 2), norm_eval=norm_eval).train()
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.training != norm_eval for m in bns)
    assert backbone.training and backbone.features.model.conv1.training
    stats = [m.running_mean.clone() for m in bns]
    backbone(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(m.running_mean, s) == norm_eval for m, s in zip(bns, stats))


# --- init_cfg Pretrained ------------------------------------------------------------------------------------------

def _timm_weights(seed=1):
    torch.manual_seed(seed)
    return timm.create_model('resnet18', pretrained=False).state_dict()


def test_init_cfg_pretrained_loads_timm_weights(tmp_path):
    weights = _timm_weights()
    path = tmp_path / 'resnet18.pth'
    torch.save({'state_dict': weights, 'epoch': 3}, path)
    backbone = MMENGINE_MODELS.build(dict(type='ZooBackbone', model_name='resnet18', out_indices=(1, 2),
                                          init_cfg=dict(type='Pretrained', checkpoint=str(path))))
    assert not torch.equal(backbone.features.model.layer1[0].conv1.weight, weights['layer1.0.conv1.weight'])
    backbone.init_weights()
    own = backbone.features.model.state_dict()
    assert own and all(torch.equal(v, weights[k]) for k, v in own.items())  # layer3/4 and fc were dropped


def test_init_cfg_pretrained_prefix_and_zoo_layout(tmp_path):
    source = ZooBackbone('patnet_t0', out_indices=(1, 2))
    path = tmp_path / 'detector.pth'
    torch.save({'state_dict': {f'backbone.{k}': v + 1 for k, v in source.state_dict().items()},
                'meta': {}}, path)
    torch.manual_seed(3)
    backbone = ZooBackbone('patnet_t0', out_indices=(1, 2),
                           init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    backbone.init_weights()
    ref = source.state_dict()
    assert all(torch.equal(v, ref[k] + 1) for k, v in backbone.state_dict().items())
    with pytest.raises(CheckpointMismatchError, match="no keys under prefix 'neck.'"):
        ZooBackbone('patnet_t0', out_indices=(1, 2), init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                                     prefix='neck')).init_weights()


@pytest.mark.parametrize('damage, message', [('drop', 'missing keys'), ('reshape', 'shape mismatches'),
                                             ('extra', 'unexpected keys')])
def test_init_cfg_pretrained_mismatch_names_the_file(tmp_path, damage, message):
    weights = _timm_weights()
    if damage == 'drop':
        del weights['layer1.0.conv1.weight']
    elif damage == 'reshape':
        weights['layer2.0.bn1.weight'] = torch.ones(7)
    else:
        weights['layer1.9.conv1.weight'] = torch.ones(1)
    path = tmp_path / f'bad_{damage}.pth'
    torch.save(weights, path)
    backbone = ZooBackbone('resnet18', out_indices=(1, 2), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=f'{path.name}.*does not fit') as info:
        backbone.init_weights()
    assert message in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # nothing was loaded


def test_pretrained_twice_is_refused(tmp_path):
    with pytest.raises(ValueError, match='either by pretrained=True or by init_cfg'):
        ZooBackbone('resnet18', pretrained=True, init_cfg=dict(type='Pretrained', checkpoint='x.pth'))


# --- the route the toolboxes already ship: their TIMMBackbone on any zoo model ------------------------------------

def test_timm_backbone_call_builds_zoo_models():
    """mmseg's and mmpretrain's TIMMBackbone call timm.create_model with exactly these arguments, then drop the
    classifier attributes; a zoo model must come out of that call as a feature extractor."""
    assert TIMM_BACKBONE_KWARGS == ('model_name', 'features_only', 'pretrained', 'in_chans', 'checkpoint_path')
    call = dict(zip(TIMM_BACKBONE_KWARGS, ('patnet_t0', True, False, 3, '')))
    model = timm.create_model(**call, out_indices=(1, 2, 3))
    model.global_pool = model.fc = model.classifier = None  # as TIMMBackbone does
    features = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == model.feature_info.channels()


@pytest.mark.parametrize('toolbox, registry_module, models_module, type_name', [
    ('mmseg', 'mmseg.registry', 'mmseg.models', 'TIMMBackbone'),
    ('mmdet', 'mmpretrain.registry', 'mmpretrain.models', 'mmpretrain.TIMMBackbone'),
])
def test_toolbox_timm_backbone_builds_zoo_model(toolbox, registry_module, models_module, type_name):
    error = _import_error(registry_module, models_module)
    if error is not None:
        pytest.skip(f'{models_module} does not import here (missing {error.name!r}); the call it makes is checked by '
                    'test_timm_backbone_call_builds_zoo_models')
    registry = importlib.import_module(registry_module).MODELS
    backbone = registry.build(dict(type=type_name, model_name='patnet_t0', features_only=True, pretrained=False,
                                   out_indices=(1, 2, 3)))
    features = backbone(torch.randn(1, 3, 64, 64))
    assert len(features) == 3 and all(f.ndim == 4 for f in features)
