"""Every config in configs/ builds, and its model runs one loss and one predict step on two tiny images on CPU.

The checks follow the task of the built model: classifiers (labels, scores), segmentors (masks), detectors (boxes).
Configs that load pretrained weights are built without them: no test downloads anything."""
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402
from visionattn.heads.compression.task import ImageCompressor  # noqa: E402
from visionattn.heads.detection.task import Detector, det_collate  # noqa: E402
from visionattn.heads.diffusion.task import DiffusionModel  # noqa: E402
from visionattn.heads.reid.task import CoreReIDTargetModel, ReIDSourceModel  # noqa: E402
from visionattn.heads.segmentation.task import Segmentor  # noqa: E402

from visionattn.engine import MODELS  # noqa: E402

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').rglob('*.py') if '_base_' not in p.parts)
BIG_PARAMS = 50e6  # task models above this run only in the full suite (the slow marker)


def _param(path):
    cfg = Config.fromfile(path)
    name = str(path.relative_to(ROOT / 'configs'))
    network = cfg.model.get('network')
    if isinstance(network, dict) and network.get('pretrained'):
        network.pretrained = False
    if cfg.model.get('pretrained'):
        cfg.model.pretrained = False
    with torch.device('meta'):  # parameters without memory or initialisation: ~0.1 s a config
        params = sum(p.numel() for p in MODELS.build(cfg.model).parameters())
    return pytest.param(path, id=name, marks=pytest.mark.slow if params > BIG_PARAMS else ())


def test_there_are_configs():
    assert CONFIGS


def _check_segmentor(model: Segmentor) -> None:
    size, num_classes = 64, model.num_classes
    channels = int(getattr(model.data_preprocessor, 'mean', torch.zeros(3)).shape[0])
    images = torch.randint(0, 256, (2, channels, size, size), dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (2, size, size))
    masks[:, :4] = 255  # some ignored pixels

    def samples():
        return [BaseDataElement(gt_sem_seg=m.clone(), metainfo={'index': i}) for i, m in enumerate(masks)]
    model.train()
    batch = model.data_preprocessor({'inputs': images, 'data_samples': samples()}, training=True)
    losses = model(**batch, mode='loss')
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor({'inputs': images, 'data_samples': samples()})
        predictions = model(**batch, mode='predict')
    assert len(predictions) == 2
    for p in predictions:
        assert p.pred_sem_seg.shape == (size, size) and p.pred_sem_seg.dtype == torch.long
        assert p.seg_logits.shape == (num_classes, size, size)
        assert 0 <= int(p.pred_sem_seg.min()) and int(p.pred_sem_seg.max()) < num_classes


def _check_detector(model: Detector) -> None:
    """Detection: two images of different sizes (padded, so the padding mask matters) with a box each, and one
    without; 224 pixels give the 900 queries of the COCO configs enough tokens (1,045 over strides 8-64)."""
    num_classes = model.num_classes
    sizes = [(224, 224), (208, 224)]

    def batch():
        items = [{'img': torch.randint(0, 256, (3, h, w), dtype=torch.uint8),
                  'gt_bboxes': torch.tensor([[10.0, 20.0, 120.0, 100.0]])[:1 - i],
                  'gt_labels': torch.tensor([num_classes - 1])[:1 - i],
                  'meta': {'img_id': i + 1, 'ori_shape': (2 * h, 2 * w), 'scale_factor': (0.5, 0.5)}}
                 for i, (h, w) in enumerate(sizes)]
        return det_collate(items)
    torch.manual_seed(0)
    model.train()
    losses = model(**model.data_preprocessor(batch(), training=True), mode='loss')
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        predictions = model(**model.data_preprocessor(batch()), mode='predict')
    assert len(predictions) == 2
    for p, (h, w) in zip(predictions, sizes):
        pred = p.pred_instances
        assert pred.bboxes.shape == (len(pred.scores), 4) and len(pred.scores) > 0
        assert pred.bboxes.min() >= 0  # in the original (2x) image's pixels
        assert (pred.bboxes[:, 0::2] <= 2 * w).all() and (pred.bboxes[:, 1::2] <= 2 * h).all()
        assert ((pred.labels >= 0) & (pred.labels < num_classes)).all()


def _check_compressor(model: ImageCompressor) -> None:
    """Learned compression: the rate-distortion loss on two crops, then a real encode/decode of them (bpp from the
    bitstream length). MS-SSIM models need sides of at least 161 pixels (five scales)."""
    size = 192 if model.metric == 'ms-ssim' else 64
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)

    def samples():
        return [BaseDataElement(metainfo={'index': i}) for i in range(2)]
    model.train()
    batch = model.data_preprocessor({'inputs': images, 'data_samples': samples()}, training=True)
    losses = model(**batch, mode='loss')
    assert torch.isfinite(losses['loss']) and losses['bpp'] > 0
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor({'inputs': images, 'data_samples': samples()})
        predictions = model(**batch, mode='predict')
    assert len(predictions) == 2
    for p in predictions:
        assert p.pred_img.shape == (3, size, size) and p.pred_img.dtype == torch.uint8
        assert p.num_bytes > 0 and p.bpp == 8 * p.num_bytes / size ** 2


def _check_reid(model) -> None:
    """Person re-identification: two identities x two images at 64x32; the target model reads pseudo-labels."""
    images = torch.randint(0, 256, (4, 3, 64, 32), dtype=torch.uint8)

    def samples():
        return [BaseDataElement(gt_label=torch.tensor(i // 2), metainfo={'index': i, 'camid': i % 2})
                for i in range(4)]
    if isinstance(model, CoreReIDTargetModel):
        labels = torch.tensor([0, 0, 1, 1]).numpy()
        model.set_pseudo_labels({'global': labels, 'upper': labels, 'lower': labels})
    model.train()
    batch = model.data_preprocessor({'inputs': images, 'data_samples': samples()}, training=True)
    losses = model(**batch, mode='loss')
    loss = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor({'inputs': images, 'data_samples': samples()})
        predictions = model(**batch, mode='predict')
    assert len(predictions) == 4
    for p in predictions:
        assert p.pred_feature.dim() == 1
        torch.testing.assert_close(p.pred_feature.norm(), torch.tensor(1.0))


def _check_diffusion(model: DiffusionModel) -> None:
    """Diffusion: loss and a 2-step predict on two items. Latent models get 64-pixel images (8x8 latents: DiT and
    PixArt take sizes other than their training size) except LaMamba-Diff, whose positional embedding is learned at
    one latent size (it gets 8x that many pixels, the SD VAE's factor); pixel models their input size, video models
    random clips; controlled models read the synthetic pairs' Canny maps."""
    from visionattn.heads.diffusion.data import SyntheticDiffusionPairs
    from visionattn.heads.diffusion.lamamba_diff import LaMambaDiff
    from visionattn.heads.diffusion.task import diffusion_collate
    denoiser = model.denoiser
    model.num_inference_steps = 2
    if isinstance(denoiser.input_size, int):
        size = denoiser.input_size
        if model.vae is not None:
            size = 8 * denoiser.input_size if isinstance(denoiser, LaMambaDiff) else 64
        batch = diffusion_collate([SyntheticDiffusionPairs(2, size, seed=1)[i] for i in range(2)])
        if model.vae is None and denoiser.in_channels != 3:
            batch['inputs'] = batch['inputs'][:, :1].expand(-1, denoiser.in_channels, -1, -1)
        for sample in batch['data_samples']:
            sample.gt_label = sample.gt_label.clamp(max=max(denoiser.num_classes - 1, 0))
    else:
        clips = torch.randint(0, 256, (2, denoiser.in_channels, *denoiser.input_size), dtype=torch.uint8)
        batch = {'inputs': clips, 'data_samples': [BaseDataElement(gt_label=torch.tensor(i), metainfo={'index': i})
                                                   for i in range(2)]}
    model.train()
    losses = model(**model.data_preprocessor(batch, training=True), mode='loss')
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()
    model.eval()
    with torch.no_grad():
        samples = model(**model.data_preprocessor(batch), mode='predict')
    assert len(samples) == 2
    for sample, image in zip(samples, batch['inputs']):
        assert sample.pred_img.shape == image.shape and sample.pred_img.dtype == torch.uint8


@pytest.mark.parametrize('path', [_param(p) for p in CONFIGS])
def test_config_builds_and_steps(path):
    cfg = Config.fromfile(path)
    network = cfg.model.get('network')
    if isinstance(network, dict) and network.get('pretrained'):
        network.pretrained = False  # no downloads in tests
    if cfg.model.get('pretrained'):
        cfg.model.pretrained = False
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)  # a ReID source_checkpoint is read only when training starts (init_weights)
    if isinstance(model, (ReIDSourceModel, CoreReIDTargetModel)):
        _check_reid(model)
        return
    if isinstance(model, Segmentor):
        _check_segmentor(model)
        return
    if isinstance(model, Detector):
        _check_detector(model)
        return
    if isinstance(model, DiffusionModel):
        _check_diffusion(model)
        return
    if isinstance(model, ImageCompressor):
        _check_compressor(model)
        return
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


_RELATIVE_IMPORT = re.compile(r'^\s*from (\.+)([\w.]*) import', re.M)


def test_bases_follow_one_convention():
    """configs/_base_/ holds only what several tasks share; a task's own bases live in configs/<task>/_base_/, and no
    config reads another task's files (issue 24)."""
    configs = ROOT / 'configs'
    users = defaultdict(set)
    for path in sorted(configs.rglob('*.py')):
        rel = path.relative_to(configs)
        for dots, module in _RELATIVE_IMPORT.findall(path.read_text()):
            folder = path.parent
            for _ in range(len(dots) - 1):
                folder = folder.parent
            target = (folder / module.replace('.', '/')).with_suffix('.py').resolve()
            assert target.is_file(), f'{rel} imports {dots}{module}, which does not exist'
            where = target.relative_to(configs).parts
            if where[0] == '_base_':
                users[where[-1]].add(rel.parts[0])
            else:
                assert where[0] == rel.parts[0], f'{rel} reads {"/".join(where)}, a file of another task'
    shared = sorted(p.name for p in (configs / '_base_').glob('*.py'))
    assert shared and not list((configs / '_base_').glob('*/*.py')), 'configs/_base_/ is flat: shared files only'
    for name in shared:
        assert len(users[name] - {'_base_'}) >= 2, (f'configs/_base_/{name} serves {sorted(users[name])} only: a '
                                                    "task's own base belongs in configs/<task>/_base_/")


@pytest.mark.parametrize('path', [p for p in CONFIGS if p.parent.name == 'diffusion'], ids=lambda p: p.stem)
def test_diffusion_denoisers_see_every_value_of_a_patch(path):
    # A patch embedding narrower than a patch's values caps what the denoiser can learn (the LaMamba-Diff smoke
    # config at patch 4 and width 32 kept a noise loss near 0.37 at every t): building warns, so no config may.
    import warnings
    cfg = Config.fromfile(path)
    if cfg.model.get('pretrained'):
        cfg.model.pretrained = False
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*patch embedding is')
        with torch.device('meta'):
            MODELS.build(cfg.model)
