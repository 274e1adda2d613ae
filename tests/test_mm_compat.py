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
    # out_indices are timm's feature indices: 0 is ResNet's stride-2 stem, so layer2..4 are 2..4
    backbone = registry.build(dict(type='ZooBackbone', model_name='resnet18', out_indices=(2, 3, 4)))
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(backbone.channels) == [128, 256, 512]


def test_unknown_toolbox_is_named():
    with pytest.raises(ValueError, match='unknown toolbox'):
        register_zoo_backbone('mmpose')


# --- the plugins' import against stand-in toolboxes ---------------------------------------------------------------

def _toolbox_module(name: str) -> bool:
    return any(name == m or name.startswith(m + '.') for m in [*REGISTER, *(v[0] for v in REGISTER.values())])


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """Make ``import <toolbox>`` find a stand-in package whose models module runs ``models_source``.

    Where the real toolbox is installed, its modules are put back afterwards (monkeypatch restores what it removed):
    importing mmdet.registry or mmseg.registry a second time would register the scope with mmengine twice.
    """
    before = set(sys.modules)

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
    for name in [m for m in sys.modules if m not in before and _toolbox_module(m)]:  # what only the stand-ins imported
        sys.modules.pop(name)


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


@pytest.mark.parametrize('name, norms', [('nat_mini', 'feature_norms'), ('biformer_t', 'extra_norms')])
def test_frozen_stages_freeze_the_output_norms_of_their_levels(name, norms):
    # Adversarial probe: NAT's feature_norms.i and BiFormer's extra_norms.i (the per-level output norms of
    # features_only) stayed trainable, so frozen_stages=4 left a trainable backbone and a frozen stage's features moved;
    # mmdet's Swin freezes norm{i} with stage i.
    backbone = ZooBackbone(name, frozen_stages=1, out_indices=(0, 1, 2, 3)).train()
    params = dict(backbone.named_parameters())
    prefix = f'features.model.model.{norms}.'
    assert not params[prefix + '0.weight'].requires_grad and params[prefix + '1.weight'].requires_grad
    modules = dict(backbone.named_modules())
    assert not modules[prefix[:-1] + '.0'].training and modules[prefix[:-1] + '.1'].training
    assert not any(p.requires_grad for p in ZooBackbone(name, frozen_stages=4).parameters())


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


# --- the real toolboxes, where they import (they need a full mmcv build: see docs/mm_toolboxes.md) ---------------

def _real_registry(toolbox: str):
    """The toolbox's MODELS registry with ZooBackbone registered by its plugin, as a config's custom_imports does;
    skip where the toolbox is not installed or its models do not import (mmcv without compiled ops)."""
    pytest.importorskip(toolbox)
    error = _import_error(f'{toolbox}.models')
    if error is not None:
        pytest.skip(f'{toolbox}.models does not import here (missing {error.name!r})')
    importlib.import_module(REGISTER[toolbox][0])
    return importlib.import_module(f'{toolbox}.registry').MODELS


def _images(count: int = 2, size: int = 64):
    torch.manual_seed(5)
    return [torch.randint(0, 256, (3, size, size), dtype=torch.uint8) for _ in range(count)]


def test_real_mmdet_retinanet_with_zoo_backbone(tmp_path):
    """RetinaNet from mmdet's registry on ZooBackbone: Pretrained init_cfg with a detector prefix through mmengine's
    init_weights, frozen stages and norm_eval under the detector's train(), one loss step, and predictions."""
    models = _real_registry('mmdet')
    from mmdet.structures import DetDataSample
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmengine.structures import InstanceData

    torch.manual_seed(0)
    source = ZooBackbone('patnet_t0')
    path = tmp_path / 'retinanet.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}, 'meta': {}}, path)
    torch.manual_seed(1)
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = models.build(ConfigDict(  # as from a config file: the heads read test_cfg by attribute
            type='RetinaNet',
            data_preprocessor=dict(type='DetDataPreprocessor', pad_size_divisor=32),
            backbone=dict(type='ZooBackbone', model_name='patnet_t0', frozen_stages=1, norm_eval=True,
                          init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.')),
            neck=dict(type='FPN', in_channels=source.channels, out_channels=32, start_level=1,
                      add_extra_convs='on_input', num_outs=5),
            bbox_head=dict(type='RetinaHead', num_classes=2, in_channels=32, stacked_convs=1, feat_channels=32,
                           anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=1,
                                                 ratios=[1.0], strides=[8, 16, 32, 64, 128]),
                           bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
                           loss_cls=dict(type='FocalLoss', use_sigmoid=True), loss_bbox=dict(type='L1Loss')),
            train_cfg=dict(assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0),
                           sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1, debug=False),
            test_cfg=dict(nms_pre=100, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=10)))
    assert isinstance(detector.backbone, ZooBackbone)
    detector.init_weights()
    reference = source.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in detector.backbone.state_dict().items())

    detector.train()
    frozen = set(detector.backbone.frozen_parameter_names())
    assert frozen and all(not p.requires_grad for n, p in detector.backbone.named_parameters() if n in frozen)
    batchnorms = [m for m in detector.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and not any(m.training for m in batchnorms)

    samples = []
    for box, label in (([8., 8., 40., 40.], 0), ([20., 4., 60., 30.], 1)):
        sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor([box]), labels=torch.tensor([label]))
        samples.append(sample)
    data = detector.data_preprocessor(dict(inputs=_images(), data_samples=samples), True)
    loss, log_vars = detector.parse_losses(detector(**data, mode='loss'))
    assert {'loss_cls', 'loss_bbox'} <= set(log_vars) and torch.isfinite(loss)
    loss.backward()
    params = dict(detector.backbone.named_parameters())
    assert all(params[n].grad is None for n in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in params.items() if n not in frozen)

    detector.eval()
    with torch.no_grad():
        results = detector(**detector.data_preprocessor(dict(inputs=_images(), data_samples=samples), False),
                           mode='predict')
    assert len(results) == 2
    for result in results:
        assert result.pred_instances.bboxes.shape[1] == 4 and len(result.pred_instances.bboxes) > 0


def test_real_mmseg_upernet_with_zoo_backbone():
    """EncoderDecoder with UPerHead and an auxiliary FCNHead from mmseg's registry on ZooBackbone: one loss step
    reaching the backbone, and full-size predictions."""
    models = _real_registry('mmseg')
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    channels = [32, 64, 128, 256]  # patnet_t0
    norm_cfg = dict(type='BN', requires_grad=True)
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        segmentor = models.build(ConfigDict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
            backbone=dict(type='ZooBackbone', model_name='patnet_t0'),
            decode_head=dict(type='UPerHead', in_channels=channels, in_index=[0, 1, 2, 3], channels=16,
                             num_classes=3, norm_cfg=norm_cfg, loss_decode=dict(type='CrossEntropyLoss')),
            auxiliary_head=dict(type='FCNHead', in_channels=channels[2], in_index=2, channels=16, num_convs=1,
                                num_classes=3, norm_cfg=norm_cfg,
                                loss_decode=dict(type='CrossEntropyLoss', loss_weight=0.4)),
            test_cfg=dict(mode='whole')))
    assert isinstance(segmentor.backbone, ZooBackbone) and segmentor.backbone.channels == channels
    segmentor.init_weights()
    segmentor.train()
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        samples.append(sample)
    data = segmentor.data_preprocessor(dict(inputs=_images(), data_samples=samples), True)
    loss, log_vars = segmentor.parse_losses(segmentor(**data, mode='loss'))
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log_vars) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in segmentor.backbone.parameters())

    segmentor.eval()
    with torch.no_grad():
        results = segmentor(**segmentor.data_preprocessor(dict(inputs=_images(), data_samples=samples), False),
                            mode='predict')
    assert [tuple(r.pred_sem_seg.data.shape) for r in results] == [(1, 64, 64)] * 2


def test_mm_smoke_tool_trains_and_tests_both_toolboxes(tmp_path):
    """tools/mm_smoke.py end to end at its smallest: the Runner, the datasets, CocoMetric and IoUMetric."""
    _real_registry('mmdet')
    _real_registry('mmseg')
    from conftest import load_tool

    summary = load_tool('mm_smoke').main([
        '--model', 'patnet_t0', '--iters', '2', '--size', '64', '--train-images', '2', '--val-images', '2',
        '--work-dir', str(tmp_path), '--out', str(tmp_path / 'summary.json')])
    det, seg = summary['parts']['det'], summary['parts']['seg']
    for part, loss_keys in ((det, {'loss_cls', 'loss_bbox'}), (seg, {'decode.loss_ce', 'aux.loss_ce'})):
        assert len(part['losses']) == 2
        assert all(loss_keys <= set(step) and all(v == v for v in step.values()) for step in part['losses'])
    assert 'coco/bbox_mAP' in det['metrics'] and {'aAcc', 'mIoU', 'mAcc'} <= set(seg['metrics'])
    assert (tmp_path / 'summary.json').is_file()


def test_a_single_level_serves_detr_style_heads():
    # mmdet's DETR, Conditional-DETR and DAB-DETR take one stride-32 map (out_indices=(3,)): this was refused with
    # the segmentation decoders' two-level rule (adversarial probe)
    backbone = ZooBackbone('patnet_t0', out_indices=(3,)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert len(feats) == 1 and feats[0].shape[-2:] == (2, 2) and feats[0].shape[1] == backbone.channels[0]
    assert backbone.strides == [32]



# --- adversarial probe of the options and the Pretrained init ------------------------------------------------------

@pytest.mark.parametrize('value, message', [((5,), 'feature levels 0 to 4.*5 is out of range'),
                                            ((1, 1), 'names a feature level twice'),
                                            ((2, -3), 'names a feature level twice'),
                                            ((2, 1), 'must be in increasing order'),
                                            ((1.0, 2), 'are integers'), (3, 'must be a sequence')])
def test_out_indices_that_timm_would_misread_are_named(value, message):
    # (5,) and (1, 1) failed in timm with a bare IndexError, (2, 1) built and then failed in forward blaming NHWC maps
    # (the maps come in level order, the channels were listed in the given order), 3 failed in tuple()
    with pytest.raises((ValueError, TypeError), match=message):
        ZooBackbone('resnet18', out_indices=value)


def test_negative_out_indices_count_from_the_last_level():
    backbone = ZooBackbone('resnet18', out_indices=(-2, -1)).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in backbone(torch.randn(1, 3, 64, 64))] == list(backbone.channels) == [256, 512]


@pytest.mark.parametrize('value', [1.5, True])
def test_frozen_stages_must_be_an_integer(value):
    # 1.5 froze the stem and stage 1 (a float count taken as given), True froze one stage
    with pytest.raises(TypeError, match='frozen_stages must be an integer'):
        ZooBackbone('resnet18', frozen_stages=value)


@pytest.mark.parametrize('strict', [True, False])
def test_init_cfg_pretrained_refuses_values_of_another_kind(tmp_path, strict):
    # Integer weights were cast into the float parameters without a word, and a number in place of a tensor failed
    # in an AttributeError ('float' object has no attribute 'shape').
    weights = _timm_weights()
    weights['layer1.0.conv1.weight'] = (weights['layer1.0.conv1.weight'] * 100).long()
    weights['layer2.0.bn1.weight'] = 3.0
    path = tmp_path / 'odd values.pth'
    torch.save(weights, path)
    backbone = ZooBackbone('resnet18', out_indices=(1, 2),
                           init_cfg=dict(type='Pretrained', checkpoint=str(path), strict=strict))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r'(?s)odd values\.pth does not fit.*layer1\.0\.conv1\.weight: '
                                                      r'checkpoint dtype torch\.int64.*layer2\.0\.bn1\.weight: '
                                                      r'checkpoint holds a float, not a tensor'):
        backbone.init_weights()
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_non_strict_load_warns_naming_what_did_not_fit(tmp_path, caplog):
    # Adversarial probe: strict=False left a mis-shaped layer at initialisation with one info-level line (hidden by
    # default logging) that counted the keys without naming them.
    weights = _timm_weights()
    weights['layer1.0.conv1.weight'] = torch.zeros(3, 3, 3, 3)
    del weights['layer2.0.bn1.bias']
    path = tmp_path / 'partial.pth'
    torch.save(weights, path)
    backbone = ZooBackbone('resnet18', out_indices=(1, 2))
    with caplog.at_level('WARNING', logger='visionattn.heads.mm_compat'):
        backbone.load_pretrained(str(path), strict=False)
    warned = ' '.join(r.getMessage() for r in caplog.records if r.levelname == 'WARNING')
    assert 'strict=False' in warned and 'layer1.0.conv1.weight' in warned and 'bn1.bias' in warned
    caplog.clear()
    torch.save(_timm_weights(), path)
    with caplog.at_level('WARNING', logger='visionattn.heads.mm_compat'):
        backbone.load_pretrained(str(path), strict=False)  # only the dropped classifier unused: no warning
    assert not [r for r in caplog.records if r.levelname == 'WARNING']


def test_init_cfg_pretrained_half_and_ddp_weights_load(tmp_path):
    # fp16 weights (an AMP export) under a DataParallel prefix load, exactly as stored
    weights = _timm_weights()
    path = tmp_path / 'half.pth'
    torch.save({'state_dict': {f'module.{k}': v.half() if v.is_floating_point() else v for k, v in weights.items()}},
               path)
    backbone = ZooBackbone('resnet18', out_indices=(1, 2), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    backbone.init_weights()
    own = backbone.features.model.state_dict()
    assert all(torch.equal(v, weights[k].half().to(v.dtype) if v.is_floating_point() else weights[k])
               for k, v in own.items())


@pytest.mark.parametrize('url', ['https://download.openmmlab.com/x/resnet18.pth', 'torchvision://resnet18'])
def test_init_cfg_pretrained_url_is_named(url):
    from visionattn.hub import CheckpointError
    backbone = ZooBackbone('resnet18', out_indices=(1, 2), init_cfg=dict(type='Pretrained', checkpoint=url))
    with pytest.raises(CheckpointError, match='is a URL: ZooBackbone reads a local file'):
        backbone.init_weights()
