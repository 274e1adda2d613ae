"""The zoo backbones in OpenMMLab's registries: built through the registry where the toolbox imports (it needs a full
mmcv build, which CI does not make: see visionattn.heads.mm_compat), else the error says why."""
import importlib

import pytest
import torch

pytestmark = pytest.mark.heads

REGISTER = {'mmdet': ('visionattn.heads.detection.mmdet_compat', 'register_mmdet_backbones'),
            'mmseg': ('visionattn.heads.segmentation.mmseg_compat', 'register_mmseg_backbones')}


def _toolbox_imports(toolbox: str) -> bool:
    try:
        importlib.import_module(f'{toolbox}.models')
        return True
    except ImportError:
        return False


@pytest.mark.parametrize('toolbox', sorted(REGISTER))
def test_zoo_backbone_registration(toolbox):
    module_name, function = REGISTER[toolbox]
    if not _toolbox_imports(toolbox):
        with pytest.raises(ImportError, match='full mmcv'):
            getattr(importlib.import_module(module_name), function)()
        pytest.skip(f'{toolbox} does not import here (it needs a full mmcv build); checked the error only')
    getattr(importlib.import_module(module_name), function)(force=True)
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    backbone = registry.build(dict(type='ZooBackbone', model_name='resnet18', out_indices=(1, 2, 3)))
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == list(backbone.channels) == [128, 256, 512]


def test_unknown_toolbox_is_named():
    from visionattn.heads.mm_compat import register_zoo_backbone
    with pytest.raises(ValueError, match='unknown toolbox'):
        register_zoo_backbone('mmpose')
