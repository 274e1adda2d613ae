"""Medical segmentation: the official Dice loss, the slice datasets in the official layout, the synthetic volumes,
the official augmentations, the per-volume Dice/HD95 metric, and tools/train.py + tools/test.py on the synthetic
slices."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from visionattn.heads.segmentation.losses import CEDiceLoss, DiceLoss
from visionattn.heads.segmentation.medical_data import (
    AVTDataset,
    SynapseDataset,
    SyntheticSlicesDataset,
    ct_window,
    medical_transforms,
    unit_to_uint8,
)

pytest.importorskip('mmengine')
from visionattn.heads.segmentation.medical_task import (  # noqa: E402
    DiceHD95Metric,
    MedicalSegmentor,
    hd95,
    metric_percase,
)

pytestmark = pytest.mark.heads

ROOT = Path(__file__).resolve().parents[1]
SMOKE = 'configs/segmentation/paratranscnn_synthetic_slices.py'


# ----------------------------------------------------------------------------------------------------------- losses
def _official_dice_loss(probs, target, num_classes):
    """The official formula written out: per class over the whole batch, squared denominators, mean over classes."""
    loss = 0.0
    for c in range(num_classes):
        p, t = probs[:, c], (target == c).float()
        loss += 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    return loss / num_classes


def test_dice_loss_matches_the_official_formula():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    expected = _official_dice_loss(logits.softmax(1), target, 4)
    torch.testing.assert_close(DiceLoss(4)(logits, target), expected)


def test_dice_loss_of_a_perfect_prediction_is_zero_and_absent_classes_count():
    target = torch.randint(0, 2, (2, 8, 8))  # classes 0 and 1 only, 3 classes in the model
    perfect = 100.0 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert DiceLoss(3)(perfect, target).item() < 1e-4
    # The quirk: class 2 is absent; a small probability on it everywhere costs it almost a full unit of loss.
    hedged = perfect.clone()
    hedged[:, 2] = 95.0
    assert DiceLoss(3)(hedged, target).item() > 0.3


def test_dice_loss_leaves_ignored_pixels_out():
    torch.manual_seed(0)
    logits, target = torch.randn(1, 3, 8, 8), torch.randint(0, 3, (1, 8, 8))
    target[:, :3] = 255
    changed = logits.clone()
    changed[:, :, :3] = torch.randn(1, 3, 3, 8) * 10
    torch.testing.assert_close(DiceLoss(3)(logits, target), DiceLoss(3)(changed, target))
    with pytest.raises(ValueError, match='labels must lie'):
        DiceLoss(3)(logits, torch.full((1, 8, 8), 7))


def test_ce_dice_loss_weights():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    ce, dice = F.cross_entropy(logits, target), DiceLoss(3)(logits, target)
    torch.testing.assert_close(CEDiceLoss(3)(logits, target), 0.5 * ce + 0.5 * dice)
    torch.testing.assert_close(CEDiceLoss(3, ce_weight=0.2, dice_weight=0.8)(logits, target), 0.2 * ce + 0.8 * dice)


def test_ce_dice_loss_of_an_all_ignored_batch_is_zero_not_nan():
    # cross-entropy's mean over no labelled pixel is 0/0: one such batch turned every weight to NaN
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = CEDiceLoss(3)(logits, torch.full((2, 8, 8), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_dice_loss_needs_one_weight_per_class():
    # a single weight broadcast silently over every class; the official loop reads weight[i] for each class
    logits, target = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    for weight in ([2.0], [1.0, 2.0]):
        with pytest.raises(ValueError, match='one value per class'):
            DiceLoss(3)(logits, target, weight=weight)
    DiceLoss(3)(logits, target, weight=[1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------------------------------------- data
def test_ct_window():
    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 2000.0])
    np.testing.assert_allclose(ct_window(hu, -125, 275), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert unit_to_uint8(ct_window(hu, -125, 275)).tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match='high > low'):
        ct_window(hu, 10, 10)


def _write_synapse(root: Path, volume_suffix: str):
    """Two training slices of one case and two test volumes, in the official layout."""
    rng = np.random.default_rng(0)
    (root / 'train_npz').mkdir(parents=True)
    (root / 'test_vol_h5').mkdir()
    lists = root / 'lists' / 'lists_Synapse'
    lists.mkdir(parents=True)
    names = ['case0005_slice000', 'case0005_slice001']
    for name in names:
        np.savez(root / 'train_npz' / f'{name}.npz', image=rng.random((24, 20)).astype(np.float32),
                 label=rng.integers(0, 9, (24, 20)).astype(np.float32))
    (lists / 'train.txt').write_text('\n'.join(names) + '\n')
    volumes = {}
    for case, depth in (('case0001', 3), ('case0002', 2)):
        volumes[case] = (rng.random((depth, 16, 16)).astype(np.float32),
                         rng.integers(0, 9, (depth, 16, 16)).astype(np.float32))
        path = root / 'test_vol_h5' / f'{case}{volume_suffix}'
        if volume_suffix == '.npz':
            np.savez(path, image=volumes[case][0], label=volumes[case][1])
        else:
            import h5py
            with h5py.File(path, 'w') as f:
                f['image'], f['label'] = volumes[case]
    (lists / 'test_vol.txt').write_text('case0001\ncase0002\n')
    return volumes


def _check_synapse(root, volumes, volume_suffix):
    train = SynapseDataset(str(root), split='train')
    assert len(train) == 2
    item = train[1]
    assert item['img'].dtype == torch.uint8 and item['img'].shape == (1, 24, 20)
    assert item['gt_seg'].dtype == torch.int64 and item['gt_seg'].shape == (24, 20)
    assert item['meta']['case_name'] == 'case0005' and item['meta']['slice_index'] == 1
    assert item['meta']['num_slices'] == 2
    with np.load(root / 'train_npz' / 'case0005_slice001.npz') as data:
        np.testing.assert_array_equal(item['img'][0].numpy(), unit_to_uint8(data['image']))
    test = SynapseDataset(str(root), split='test_vol', volume_suffix=volume_suffix)
    assert len(test) == 5
    metas = [test[i]['meta'] for i in range(5)]
    assert [(m['case_name'], m['slice_index'], m['num_slices']) for m in metas] == [
        ('case0001', 0, 3), ('case0001', 1, 3), ('case0001', 2, 3), ('case0002', 0, 2), ('case0002', 1, 2)]
    image, label = volumes['case0002']
    np.testing.assert_array_equal(test[4]['img'][0].numpy(), unit_to_uint8(image[1]))
    np.testing.assert_array_equal(test[4]['gt_seg'].numpy(), label[1].astype(np.int64))


def test_synapse_layout_with_npz_volumes(tmp_path):
    volumes = _write_synapse(tmp_path, '.npz')
    _check_synapse(tmp_path, volumes, '.npz')


def test_synapse_layout_with_h5_volumes(tmp_path):
    pytest.importorskip('h5py')
    volumes = _write_synapse(tmp_path, '.npy.h5')
    _check_synapse(tmp_path, volumes, None)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='train.txt'):
        SynapseDataset(str(tmp_path), split='train')
    _write_synapse(tmp_path, '.npz')
    with pytest.raises(FileNotFoundError, match=r'case0001\.npy\.h5'):
        SynapseDataset(str(tmp_path), split='test_vol')


@pytest.mark.parametrize('bad', [-1.0, float('nan')])
def test_negative_or_nan_slice_labels_are_named(tmp_path, bad):
    # they were cast to uint8: -1 became 255, the ignore label, and the pixel silently dropped out of training
    _write_synapse(tmp_path, '.npz')
    path = tmp_path / 'train_npz' / 'case0005_slice001.npz'
    with np.load(path) as data:
        image, label = data['image'], data['label'].copy()
    label[3, 4] = bad
    np.savez(path, image=image, label=label)
    train = SynapseDataset(str(tmp_path), split='train')
    train[0]
    with np.errstate(invalid='ignore'), pytest.raises(ValueError, match='case0005 slice 1: the label holds -'):
        train[1]


def test_avt_windows_raw_hu(tmp_path):
    (tmp_path / 'test_vol').mkdir()
    (tmp_path / 'lists' / 'lists_AVT').mkdir(parents=True)
    (tmp_path / 'lists' / 'lists_AVT' / 'test_vol.txt').write_text('R5 (AD)\n')
    hu = np.full((2, 16, 16), 739.0, np.float32)
    hu[:, 0] = -1000.0
    np.savez(tmp_path / 'test_vol' / 'R5 (AD).npz', image=hu, label=np.zeros_like(hu),
             xyz_thickness=np.array([1.0, 1.0, 2.5]))
    item = AVTDataset(str(tmp_path), split='test_vol', volume_suffix='.npz', raw_hu=True)[1]
    assert item['img'][0, 0].tolist() == [0] * 16 and item['img'][0, 5, 5] == 128  # 739 HU is mid-window
    assert item['meta']['case_name'] == 'R5 (AD)' and item['meta']['spacing'] == (1.0, 1.0, 2.5)


def test_synthetic_slices_are_deterministic_volumes():
    a, b = SyntheticSlicesDataset(2, 6, 32, seed=3), SyntheticSlicesDataset(2, 6, 32, seed=3)
    other = SyntheticSlicesDataset(2, 6, 32, seed=4)
    for i in (0, 7, 11):
        assert torch.equal(a[i]['img'], b[i]['img']) and torch.equal(a[i]['gt_seg'], b[i]['gt_seg'])
    assert not torch.equal(a[7]['img'], other[7]['img'])
    assert a[7]['meta']['case_name'] == 'synthetic0001' and a[7]['meta']['slice_index'] == 1
    _, labels = a.volume(0)
    assert set(np.unique(labels)) == {0, 1, 2}
    vessel = (labels == 2).mean(axis=(1, 2))
    assert (vessel > 0).all() and (vessel < 0.15).all(), 'the vessel should be a thin tube on every slice'
    item = a[3]
    assert item['img'].shape == (1, 32, 32) and item['img'].dtype == torch.uint8


def test_training_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    label = np.zeros((32, 32), np.uint8)
    label[4:20, 6:14], label[22:30, 18:28] = 1, 2
    image = (label * 80 + 40).astype(np.uint8)  # a known image per label: 40, 120, 200
    pipeline = medical_transforms(train=True, img_size=32)
    changed = 0
    for seed in rng.integers(0, 2 ** 31, 24):
        pipeline.set_random_seed(int(seed))
        out = pipeline(image=image, mask=label)
        filled = out['image'] == 0  # the rotation's zero fill, label 0 there too
        assert (out['mask'][filled] == 0).all()
        np.testing.assert_array_equal(out['image'][~filled], out['mask'][~filled] * 80 + 40)
        changed += not np.array_equal(out['mask'], label)
    assert changed >= 12, 'the augmentation should change most draws (3/4 of them apply an op)'


def test_evaluation_pipeline_keeps_the_mask_size():
    out = medical_transforms(train=False, img_size=32, keep_mask_size=True)(
        image=np.zeros((48, 40), np.uint8), mask=np.ones((48, 40), np.uint8))
    assert out['image'].shape == (32, 32) and out['mask'].shape == (48, 40)


def test_synapse_config_pipelines_on_the_official_layout(tmp_path):
    from mmengine.config import Config
    from visionattn.heads.segmentation.task import seg_collate

    from visionattn.engine import DATASETS
    _write_synapse(tmp_path, '.npz')
    cfg = Config.fromfile(ROOT / 'configs/segmentation/paratranscnn_1xb4-150e_synapse-224x224.py')
    cfg.train_dataloader.dataset.data_root = str(tmp_path)
    cfg.test_dataloader.dataset.update(data_root=str(tmp_path), volume_suffix='.npz')
    train, test = DATASETS.build(cfg.train_dataloader.dataset), DATASETS.build(cfg.test_dataloader.dataset)
    item = train[0]
    assert item['img'].shape == (1, 224, 224) and item['gt_seg'].shape == (224, 224)
    batch = seg_collate([test[0], test[1]])
    assert batch['inputs'].shape == (2, 1, 224, 224)
    assert batch['data_samples'][1].gt_sem_seg.shape == (16, 16)  # scored at the slice's own size
    assert batch['data_samples'][1].metainfo['case_name'] == 'case0001'


# ----------------------------------------------------------------------------------------------------------- metric


def _brute_border(mask):
    """Surface voxels by hand: in the mask with a face neighbour outside it or outside the array."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    return mask & ~inner


def _brute_hd95(a, b, spacing):
    pa = np.argwhere(_brute_border(a)) * spacing
    pb = np.argwhere(_brute_border(b)) * spacing
    d = cdist(pa, pb)
    return np.percentile(np.hstack((d.min(1), d.min(0))), 95)


@pytest.mark.parametrize('shape,spacing', [((20, 24), (1.0, 1.0)), ((6, 14, 12), (2.5, 0.8, 0.8)),
                                           ((5, 9, 11), (1.0, 1.0, 1.0))])
def test_hd95_matches_brute_force(shape, spacing):
    rng = np.random.default_rng(len(shape))
    for _ in range(5):
        a, b = rng.random(shape) < 0.3, rng.random(shape) < 0.2
        a[(0,) * len(shape)] = b[(1,) * len(shape)] = True
        expected = _brute_hd95(a, b, np.asarray(spacing))
        assert hd95(a, b, voxel_spacing=spacing) == pytest.approx(expected, rel=1e-9)


def test_metric_percase_hand_checked_cases():
    gt = np.zeros((4, 10, 10), bool)
    gt[1:3, 2:6, 2:6] = True
    assert metric_percase(np.zeros_like(gt), gt) == (0.0, 0.0)  # empty prediction
    assert metric_percase(gt, np.zeros_like(gt)) == (1.0, 0.0)  # official quirk: no ground truth
    assert metric_percase(np.zeros_like(gt), np.zeros_like(gt)) == (0.0, 0.0)  # official quirk: both empty
    assert metric_percase(gt, gt) == (1.0, 0.0)
    shifted = np.roll(gt, 3, axis=2)  # 32 voxels each, 8 shared: Dice 0.25; the faces move by 3
    dice, dist = metric_percase(shifted, gt)
    assert dice == pytest.approx(0.25) and dist == pytest.approx(3.0)


def _sample(case, k, n, pred, gt):
    return {'case_name': case, 'slice_index': k, 'num_slices': n, 'pred_sem_seg': torch.as_tensor(pred),
            'gt_sem_seg': torch.as_tensor(gt)}


def test_metric_rebuilds_volumes_in_slice_order():
    rng = np.random.default_rng(1)
    volumes = {c: (rng.integers(0, 3, (d, 12, 12)), rng.integers(0, 3, (d, 12, 12))) for c, d in (('a', 4), ('b', 3))}
    volumes['b'][0][:] = np.where(volumes['b'][0] == 2, 0, volumes['b'][0])  # no class 2 predicted in 'b'
    samples = [_sample(c, k, len(p), p[k], g[k]) for c, (p, g) in volumes.items() for k in range(len(p))]
    order = rng.permutation(len(samples))
    metric = DiceHD95Metric()
    metric.dataset_meta = {'classes': ('background', 'organ', 'vessel')}
    metric.process({}, [samples[i] for i in order[:4]])
    metric.process({}, [samples[i] for i in order[4:]] + [samples[order[0]]])  # a repeated slice counts once
    result = metric.evaluate(len(samples))
    per_case = {c: [metric_percase(p == k, g == k) for k in (1, 2)] for c, (p, g) in volumes.items()}
    for k, name in ((0, 'organ'), (1, 'vessel')):
        assert result[f'Dice.{name}'] == pytest.approx(100 * np.mean([per_case[c][k][0] for c in volumes]))
        assert result[f'HD95.{name}'] == pytest.approx(np.mean([per_case[c][k][1] for c in volumes]))
    assert per_case['b'][1] == (0.0, 0.0)
    assert result['Dice'] == pytest.approx((result['Dice.organ'] + result['Dice.vessel']) / 2)


def test_metric_joins_volumes_without_num_slices():
    gt = np.zeros((2, 8, 8), np.int64)
    gt[:, 2:5, 2:5] = 1
    metric = DiceHD95Metric(num_classes=2)
    metric.process({}, [dict(_sample('x', k, None, gt[k], gt[k]), num_slices=None) for k in (1, 0)])
    assert metric.evaluate(2) == {'Dice': 100.0, 'HD95': 0.0, 'Dice.1': 100.0, 'HD95.1': 0.0}


@pytest.mark.parametrize('pred_shape', [(2, 8), (3, 3), (2, 4, 4)])
def test_metric_refuses_a_prediction_of_another_shape(pred_shape):
    # (2, 8) has the ground truth's pixel count: it was reshaped to 4x4 and scored; (3, 3) failed in numpy's reshape.
    metric = DiceHD95Metric(num_classes=2)
    gt = np.zeros((4, 4), np.int64)
    with pytest.raises(ValueError, match=rf'c slice 0: prediction {re.escape(str(pred_shape))} and ground truth '
                                         r'\(4, 4\) differ'):
        metric.process({}, [_sample('c', 0, 1, np.zeros(pred_shape, np.int64), gt)])
    metric.process({}, [_sample('c', 0, 1, np.zeros((1, 4, 4), np.int64), gt)])  # a leading 1 is dropped
    assert len(metric.results) == 1


@pytest.mark.parametrize('which', ['gt', 'pred'])
def test_metric_refuses_labels_beyond_its_classes(which):
    # the foreground loop runs over 1..K-1: a label K was left out of every score (here Dice 100 with class 3 missed)
    gt = np.zeros((8, 8), np.int64)
    gt[2:5, 2:5] = 1
    wrong = np.where(gt == 1, 3, 0)
    pred, truth = (gt, wrong) if which == 'gt' else (wrong, gt)
    name = 'gt_sem_seg' if which == 'gt' else 'pred_sem_seg'
    with pytest.raises(ValueError, match=f'v slice 0: {name} holds label 3 outside 0..2'):
        DiceHD95Metric(num_classes=3).process({}, [_sample('v', 0, 1, pred, truth)])
    ignored = np.where(gt == 1, 255, 0)  # ignore_index is background, not an out-of-range label
    DiceHD95Metric(num_classes=3).process({}, [_sample('v', 0, 1, ignored, ignored)])


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_classes=1), 'at least 2'),  # no foreground class: Dice and HD95 were NaN means of nothing
    (dict(num_classes=2, voxel_spacing=(1.0, 0.8)), 'voxel_spacing must be one positive size or three'),  # numpy
    (dict(num_classes=2, voxel_spacing=-1.0), 'voxel_spacing must be one positive'),  # broadcast error / wrong HD95
])
def test_metric_arguments_name_their_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiceHD95Metric(**kwargs)


def test_medical_segmentor_zooms_labels_as_the_official_test():
    from mmengine.structures import BaseDataElement
    from scipy import ndimage
    from visionattn.heads.segmentation.task import SegDataPreprocessor
    torch.manual_seed(0)
    network = torch.nn.Conv2d(3, 3, 3, padding=1)
    model = MedicalSegmentor(network, num_classes=3, data_preprocessor=dict(type=SegDataPreprocessor,
                                                                            mean=(0, 0, 0), std=(1, 1, 1)))
    images = torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8)
    sample = BaseDataElement(gt_sem_seg=torch.zeros(24, 20, dtype=torch.long), metainfo={'img_shape': (16, 16)})
    with torch.no_grad():
        batch = model.data_preprocessor({'inputs': images, 'data_samples': [sample]})
        (pred,) = model(**batch, mode='predict')
        labels = network(batch['inputs'])[0].argmax(0).numpy()
    expected = ndimage.zoom(labels.astype(np.uint8), (24 / 16, 20 / 16), order=0)
    np.testing.assert_array_equal(pred.pred_sem_seg.numpy(), expected)
    assert pred.seg_logits.shape == (3, 16, 16)


# -------------------------------------------------------------------------------------------------------- the tools
@pytest.mark.tools
def test_train_and_test_tools_on_synthetic_slices(tmp_path):
    env = {'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', 'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin',
           'NO_ALBUMENTATIONS_UPDATE': '1'}
    small = ['model.network.dim=16', 'train_dataloader.dataset.num_volumes=1', 'train_dataloader.dataset.slices=4',
             'train_dataloader.dataset.size=32', 'train_dataloader.dataset.pipeline.img_size=32',
             'test_dataloader.dataset.num_volumes=1', 'test_dataloader.dataset.slices=4',
             'test_dataloader.dataset.size=32', 'val_dataloader.dataset.num_volumes=1',
             'val_dataloader.dataset.slices=4', 'val_dataloader.dataset.size=32', 'train_cfg.max_epochs=1',
             'param_scheduler.0.end=1', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1']
    work = tmp_path / 'run'
    cmd = [sys.executable, 'tools/train.py', SMOKE, '--work-dir', str(work), '--cfg-options', *small]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [sys.executable, 'tools/test.py', SMOKE, str(work / 'epoch_1.pth'), '--work-dir', str(tmp_path / 't'),
           '--cfg-options', *small]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    line = next(ln for ln in log.splitlines() if 'test metrics:' in ln)
    for key in ('Dice', 'HD95', 'Dice.organ', 'Dice.vessel', 'HD95.organ', 'HD95.vessel'):
        assert re.search(rf"'{re.escape(key)}': [0-9.]+", line), f'{key} missing from {line}'
    assert re.search(r'organ\s+[0-9.]+\s+[0-9.]+', log) and '1 volumes; per-class results' in log
