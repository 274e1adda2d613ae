"""Every config in configs/ builds, and its model runs one loss and one predict step on two tiny images on CPU."""
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402

from visionattn.engine import MODELS  # noqa: E402
from visionattn.profile import measure  # noqa: E402

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
BIG_PARAMS = 50e6


def _param(path):
    cfg = Config.fromfile(path)
    name = str(path.relative_to(ROOT / 'configs'))
    backbone = cfg.model.get('backbone')
    big = isinstance(backbone, str) and measure(backbone).params > BIG_PARAMS
    return pytest.param(path, id=name, marks=pytest.mark.slow if big else ())


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize('path', [_param(p) for p in CONFIGS])
def test_config_builds_and_steps(path):
    cfg = Config.fromfile(path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    size = 32
    cfg_input = model.classifier.pretrained_cfg
    if cfg_input.get('fixed_input_size'):
        size = cfg_input['input_size'][-1]
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    samples = [BaseDataElement(gt_label=torch.tensor(i % model.num_classes)) for i in range(2)]
    model.train()
    batch = model.data_preprocessor({'inputs': images, 'data_samples': samples}, training=True)
    losses = model(**batch, mode='loss')
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor({'inputs': images, 'data_samples': samples})
        predictions = model(**batch, mode='predict')
    assert len(predictions) == 2
    for p in predictions:
        assert p.pred_score.shape == (model.num_classes,)
        torch.testing.assert_close(p.pred_score.sum(), torch.tensor(1.0))


@pytest.mark.parametrize('path', [p for p in CONFIGS if p.stem.endswith('_digits')], ids=lambda p: p.stem)
def test_digits_configs_build_their_data(path):
    cfg = Config.fromfile(path)
    from visionattn.engine import DATASETS
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    item = dataset[0]
    assert item['img'].dtype == torch.uint8 and item['img'].shape[0] == 3
    assert 0 <= item['gt_label'] < cfg.model.num_classes
