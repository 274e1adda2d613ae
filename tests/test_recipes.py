"""The ImageNet-1k recipes: every config whose training set is an ImageFolder builds timm's transforms and yields a
batch from a tiny image folder; the repeated-augmentation sampler, random erasing and adaptive gradient clipping do
what timm's do, wherever a config sets them (docs/recipes.md lists the recipes and their sources)."""
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from timm.data import create_transform  # noqa: E402
from timm.data.auto_augment import RandAugment  # noqa: E402
from timm.data.distributed_sampler import RepeatAugSampler as TimmRepeatAugSampler  # noqa: E402
from timm.data.random_erasing import RandomErasing  # noqa: E402
from timm.data.transforms import RandomResizedCropAndInterpolation  # noqa: E402
from timm.utils import adaptive_clip_grad  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from visionattn.heads.classification.data import ImageFolderDataset  # noqa: E402
from visionattn.heads.classification.task import ImageClassifier, cls_collate  # noqa: E402

from visionattn.data import TimmTransforms, build_pipeline  # noqa: E402
from visionattn.engine import (  # noqa: E402
    DATA_SAMPLERS,
    DATASETS,
    AGCOptimWrapper,
    ClsDataPreprocessor,
    RepeatAugSampler,
)

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {str(p.relative_to(ROOT / 'configs')): Config.fromfile(p)
           for p in sorted((ROOT / 'configs' / 'classification').glob('*.py'))}
IMAGENET = {name: cfg for name, cfg in CONFIGS.items() if cfg.train_dataloader.dataset.type is ImageFolderDataset}


def _where(condition):
    return sorted(name for name, cfg in IMAGENET.items() if condition(cfg))


REPEAT_AUG = _where(lambda cfg: cfg.train_dataloader.sampler.type is RepeatAugSampler)
AGC = _where(lambda cfg: (cfg.optim_wrapper.get('clip_grad') or {}).get('type') == 'agc')
ERASING = _where(lambda cfg: bool(cfg.model.get('random_erasing')))
MULTI_SCALE = _where(lambda cfg: cfg.train_dataloader.dataset.pipeline.get('multi_scale') is not None)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    """2 classes x 2 JPEGs in train/ and val/, smaller and less square than the crops."""
    from PIL import Image
    root = tmp_path_factory.mktemp('imagenet')
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for name in ('n01', 'n02'):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f'{i}.JPEG')
    return root


def _cfg(name, root=None):
    cfg = Config.fromfile(ROOT / 'configs' / name)
    if root is not None:  # as --cfg-options would
        cfg.merge_from_dict({'train_dataloader.dataset.data_root': str(root),
                             'val_dataloader.dataset.data_root': str(root)})
    return cfg


def test_the_recipes_are_found():
    assert set(IMAGENET) == {name for name in CONFIGS if name.endswith('_in1k.py')}
    assert REPEAT_AUG and AGC and ERASING and MULTI_SCALE


@pytest.mark.parametrize('name', sorted(IMAGENET))
def test_imagenet_config_builds_its_pipelines_and_yields_a_batch(name, image_folder):
    cfg = _cfg(name, image_folder)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    sampler = DATA_SAMPLERS.build(cfg.train_dataloader.sampler, default_args=dict(dataset=dataset, seed=0))
    pipeline = cfg.train_dataloader.dataset.pipeline
    size = pipeline.multi_scale[0] if pipeline.get('multi_scale') else pipeline.img_size
    batch = next(iter(DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=cls_collate)))
    assert batch['inputs'].dtype == torch.uint8 and batch['inputs'].shape == (2, 3, size, size)
    assert {int(s.gt_label) for s in batch['data_samples']} <= {0, 1}
    val = DATASETS.build(cfg.val_dataloader.dataset)
    item = val[0]
    assert item['img'].dtype == torch.uint8 and item['img'].shape == (3, 224, 224)


@pytest.mark.parametrize('name', sorted(IMAGENET))
def test_imagenet_config_uses_timms_transforms(name):
    """The training transform is exactly what timm.data.create_transform builds from the config's arguments; its
    RandAugment is the config's string."""
    spec = dict(_cfg(name).train_dataloader.dataset.pipeline)
    pipeline = build_pipeline(spec)
    assert isinstance(pipeline, TimmTransforms)
    args = {k: v for k, v in spec.items() if k not in ('type', 'train', 'img_size', 'multi_scale', 'crop_pct')}
    timms = create_transform(spec['img_size'], is_training=True, use_prefetcher=True, **args)
    assert repr(pipeline.transform) == repr(timms)
    ops = pipeline.transform.transforms
    assert isinstance(ops[0], RandomResizedCropAndInterpolation)
    policy = spec.get('auto_augment')
    rand_augment = [op for op in ops if isinstance(op, RandAugment)]
    if policy and policy.startswith('rand'):
        magnitude = int(policy.split('-m')[1].split('-')[0])
        assert len(rand_augment) == 1 and {op.magnitude for op in rand_augment[0].ops} == {magnitude}
    else:
        assert not rand_augment


def test_timm_transforms_are_seeded_per_sample_and_leave_global_generators_alone(image_folder):
    def dataset():
        return ImageFolderDataset(str(image_folder), 'train', dict(type=TimmTransforms, train=True, img_size=64,
                                                                   auto_augment='rand-m9-mstd0.5-inc1'))
    first, again = dataset(), dataset()
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    assert torch.equal(first[1]['img'], again[1]['img'])
    assert random.getstate() == state[0] and (np.random.get_state()[1] == state[1]).all()
    assert torch.equal(torch.get_rng_state(), state[2])
    again.set_epoch(1)
    assert not torch.equal(first[1]['img'], again[1]['img'])


@pytest.mark.parametrize('name', MULTI_SCALE)
def test_multi_scale_switches_size_at_its_epoch(name, image_folder):
    cfg = _cfg(name, image_folder)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    size, epoch = cfg.train_dataloader.dataset.pipeline.multi_scale
    dataset.set_epoch(epoch - 1)
    assert dataset[0]['img'].shape[-1] == size
    dataset.set_epoch(epoch)
    assert dataset[0]['img'].shape[-1] == cfg.train_dataloader.dataset.pipeline.img_size


@pytest.mark.parametrize('name', REPEAT_AUG)
def test_repeat_aug_sampler_is_timms(name):
    spec = _cfg(name).train_dataloader.sampler
    dataset = list(range(10))
    sampler = DATA_SAMPLERS.build(spec, default_args=dict(dataset=dataset, seed=0))
    timms = TimmRepeatAugSampler(dataset, num_replicas=1, rank=0, shuffle=spec.shuffle, num_repeats=spec.num_repeats,
                                 selected_round=spec.selected_round)
    for epoch in (0, 3):
        sampler.set_epoch(epoch)
        timms.set_epoch(epoch)  # seed 0: the epoch alone seeds the shuffle, as DeiT's RASampler
        indices = list(sampler)
        assert indices == list(timms) and len(indices) == len(sampler) == len(dataset)
        assert all(len(set(indices[i:i + spec.num_repeats])) == 1 for i in range(0, 9, spec.num_repeats))
    shifted = DATA_SAMPLERS.build(spec, default_args=dict(dataset=dataset, seed=1))
    shifted.set_epoch(2)
    assert list(shifted) == list(sampler)  # seed 1 + epoch 2 == seed 0 + epoch 3


@pytest.mark.parametrize('name', AGC)
def test_agc_clips_gradients_as_timm_does(name):
    spec = _cfg(name).optim_wrapper
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4))
    wrapper = build_optim_wrapper(model, spec)
    assert isinstance(wrapper, AGCOptimWrapper)
    loss = 100 * model(torch.randn(2, 3, 8, 8)).square().sum()  # large gradients: AGC clips
    wrapper.backward(loss)
    raw = [p.grad.clone() for p in model.parameters()]
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for r, g in zip(reference, raw):
        r.grad = g.clone()
    agc = {k: v for k, v in spec.clip_grad.items() if k != 'type'}
    adaptive_clip_grad(reference, **agc)
    wrapper.step()  # clips in place, then steps: the gradients stay the clipped ones
    for p, r, g in zip(model.parameters(), reference, raw):
        torch.testing.assert_close(p.grad, r.grad, rtol=0, atol=0)
    assert any(not torch.equal(p.grad, g) for p, g in zip(model.parameters(), raw))


def test_agc_wrapper_keeps_mmengines_norm_clipping_and_checks_its_arguments():
    model = torch.nn.Linear(4, 2)
    wrapper = AGCOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.0), clip_grad=dict(max_norm=1e-3))
    model(torch.ones(1, 4)).sum().backward()
    wrapper.step()
    assert float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()) == pytest.approx(1e-3, rel=1e-4)
    with pytest.raises(ValueError, match='clip_factor'):
        AGCOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1), clip_grad=dict(type='agc', max_norm=1.0))


@pytest.mark.parametrize('name', ERASING)
def test_random_erasing_runs_timms_op_on_the_normalised_training_batch(name):
    spec = dict(_cfg(name).model.random_erasing, probability=1.0)  # always erase, to see it
    preprocessor = ClsDataPreprocessor(random_erasing=spec)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    data = {'inputs': images, 'data_samples': [None] * 4}
    plain = preprocessor(dict(data))['inputs']  # evaluation: no erasing
    random.seed(1)
    torch.manual_seed(1)
    erased = preprocessor(dict(data), training=True)['inputs']
    random.seed(1)
    torch.manual_seed(1)
    want = RandomErasing(**spec, device='cpu')(plain.clone())
    torch.testing.assert_close(erased, want, rtol=0, atol=0)
    assert not torch.equal(erased, plain)


def test_image_classifier_hands_random_erasing_to_its_preprocessor():
    model = ImageClassifier('efficientvit_m0', num_classes=2, random_erasing=dict(probability=0.25, mode='pixel'))
    erasing = model.data_preprocessor.random_erasing
    assert isinstance(erasing, RandomErasing) and erasing.probability == 0.25 and erasing.per_pixel
    assert ImageClassifier('efficientvit_m0', num_classes=2).data_preprocessor.random_erasing is None


def test_timm_transforms_refuse_random_erasing_in_the_pipeline():
    with pytest.raises(ValueError, match='model.random_erasing'):
        TimmTransforms(True, 224, re_prob=0.25)
