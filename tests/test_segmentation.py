"""Semantic segmentation: UPerNet and Semantic FPN on the smallest model of every zoo family, the Segmentor's
modes and errors, the IoU metric against hand counts and scikit-learn, the datasets and transforms, and
tools/train.py + tools/test.py end to end on the synthetic shapes."""
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmengine')
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402
from visionattn.heads.segmentation.data import ADE20KDataset, SegFolderDataset, SyntheticShapesDataset  # noqa: E402
from visionattn.heads.segmentation.decoders import SemanticFPN, UPerNet  # noqa: E402
from visionattn.heads.segmentation.evaluation import IoUMetric  # noqa: E402
from visionattn.heads.segmentation.medical_task import MedicalSegmentor  # noqa: E402
from visionattn.heads.segmentation.task import (  # noqa: E402
    SegDataPreprocessor,
    Segmentor,
    SegPredictionImagesHook,
    seg_collate,
)
from visionattn.heads.segmentation.transforms import segmentation_transforms  # noqa: E402

from visionattn.zoo import family, list_models, paper_facts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = sorted({family(n) for n in list_models()})


@functools.lru_cache(maxsize=None)
def _smallest(family_name: str) -> str:
    """The family's model with the fewest parameters: from the recorded paper facts, else counted on 'meta'."""
    import timm
    names = [n for n in list_models() if family(n) == family_name]

    def count(name):
        facts = paper_facts(name)
        if facts is not None and (facts.reference_params or facts.params_m):
            return facts.reference_params or facts.params_m * 1e6
        return sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
    return min(names, key=count)


def test_seg_collate_is_registered_by_name():
    # a helper inserted between the decorator and seg_collate took its registration (review); configs that name the
    # collate by string (collate_fn=dict(type='seg_collate')) then failed to build
    from visionattn.engine.registry import FUNCTIONS
    assert FUNCTIONS.get('seg_collate') is seg_collate
    assert not [name for name in FUNCTIONS.module_dict if name.startswith('_')]


def _samples(masks):
    return [BaseDataElement(gt_sem_seg=m.clone(), metainfo={'index': i}) for i, m in enumerate(masks)]


def _batch(num_classes, size=64, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=gen)
    masks = torch.randint(0, num_classes, (batch, size, size), generator=gen)
    masks[:, :3] = 255
    return images, masks


def _run_all_modes(model: Segmentor, size=64):
    images, masks = _batch(model.num_classes, size)
    model.train()
    data = model.data_preprocessor({'inputs': images, 'data_samples': _samples(masks)}, training=True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(losses['loss'])
    losses['loss'].backward()
    decoder = [(n, p) for n, p in model.network.named_parameters() if not n.startswith('backbone.')]
    assert decoder and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in decoder)
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor({'inputs': images, 'data_samples': _samples(masks)})
        predictions = model(**data, mode='predict')
        logits = model(data['inputs'], mode='tensor')
    assert logits.shape == (2, model.num_classes, size, size)
    for p in predictions:
        assert p.seg_logits.shape == (model.num_classes, size, size) and p.seg_logits.dtype == torch.float32
        assert p.pred_sem_seg.shape == (size, size) and p.pred_sem_seg.dtype == torch.long
    return losses


@pytest.mark.heads
@pytest.mark.parametrize('family_name', FAMILIES)
def test_decoders_on_the_smallest_model_of_each_family(family_name):
    name = _smallest(family_name)
    torch.manual_seed(0)
    # Narrow decoders keep this fast; the structure is the one the default widths build.
    for network in (dict(type=UPerNet, backbone=name, num_classes=3, channels=32, aux_channels=16),
                    dict(type=SemanticFPN, backbone=name, num_classes=3, neck_channels=32, channels=16)):
        model = Segmentor(network, num_classes=3)
        losses = _run_all_modes(model)
        if network['type'] is UPerNet:
            assert set(losses) == {'loss', 'ce', 'aux_ce'}
            torch.testing.assert_close(losses['loss'], losses['ce'] + losses['aux_ce'])


@pytest.mark.heads
def test_default_widths_and_output_stride():
    torch.manual_seed(0)
    model = UPerNet('eca_resnet18', num_classes=5).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert out['out'].shape == (2, 5, 16, 16)  # 1/4 resolution
    assert out['aux'].shape == (2, 5, 4, 4)  # the stride-16 level
    assert model.decode_head.fpn_bottleneck.conv.out_channels == 512
    assert model.auxiliary_head.convs[0].conv.out_channels == 256
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 16, 16)  # no auxiliary output at inference
    fpn = SemanticFPN('eca_resnet18', num_classes=5)
    assert fpn.backbone.strides == [4, 8, 16, 32]  # the stride-2 stem is left out
    assert [len(h) for h in fpn.decode_head.scale_heads] == [1, 2, 4, 6]  # conv (+ upsample) per octave
    assert fpn.neck.lateral_convs[0].out_channels == 256 and fpn.decode_head.conv_seg.in_channels == 128
    assert fpn(torch.randn(1, 3, 64, 64)).shape == (1, 5, 16, 16)


class _SelfInitialisingNet(nn.Module):
    """Has an ``init_weights`` that re-draws its weights, as timm's ResNet, ViT, ... do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def init_weights(self):
        nn.init.zeros_(self.conv.weight)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.heads
def test_runner_initialisation_keeps_the_network_weights():
    # The runner calls model.init_weights() before training, and mmengine's calls every child's init_weights: a
    # network's own would wipe pretrained weights. Only an explicit init_cfg re-initialises.
    model = Segmentor(_SelfInitialisingNet(), num_classes=2)
    before = model.network.conv.weight.clone()
    model.init_weights()
    assert torch.equal(model.network.conv.weight, before) and before.abs().sum() > 0


@pytest.mark.heads
@pytest.mark.parametrize('name, reported_m', [('nat_mini', 50), ('nat_tiny', 58)])
def test_upernet_parameter_count_matches_the_nat_repo(name, reported_m):
    # NAT's segmentation README: NAT-Mini/Tiny + UPerNet (auxiliary head included) have 50M / 58M parameters.
    import timm
    backbone = timm.create_model(name, features_only=True, device='meta')
    with torch.device('meta'):
        model = UPerNet(backbone, num_classes=150)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == reported_m


@pytest.mark.heads
def test_nhwc_extractor_is_permuted():
    import timm
    extractor = timm.create_model('mambaout_femto', features_only=True)  # NHWC without feature_cls='getter'
    model = SemanticFPN(extractor, num_classes=2).eval()
    assert model.backbone.nhwc
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 16, 16)


@pytest.mark.heads
def test_bad_backbones_and_class_counts_are_named():
    with pytest.raises(ValueError, match='did you mean'):
        UPerNet('nat_minii', num_classes=3)
    with pytest.raises(TypeError, match='feature_info'):
        SemanticFPN(nn.Conv2d(3, 8, 3), num_classes=3)
    model = Segmentor(dict(type=SemanticFPN, backbone='eca_resnet18', num_classes=3), num_classes=5)
    images, masks = _batch(5, 32)
    data = model.data_preprocessor({'inputs': images, 'data_samples': _samples(masks)})
    with pytest.raises(ValueError, match=r'num_classes=5'):
        model(**data, mode='loss')


class _TinyNet(nn.Module):
    """Logits at half resolution, with an auxiliary output while training."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)
        self.aux = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        out = self.conv(x)
        return {'out': out, 'aux': self.aux(x)} if self.training else out


@pytest.mark.heads
def test_segmentor_modules_losses_and_padding():
    calls = []

    def loss(logits, target):
        calls.append((tuple(logits.shape), tuple(target.shape)))
        ce = nn.functional.cross_entropy(logits, target, ignore_index=255)
        return {'loss_ce': ce, 'loss_half': 0.5 * ce}

    model = Segmentor(_TinyNet(3), num_classes=3, loss=loss,
                      data_preprocessor=dict(type=SegDataPreprocessor, size_divisor=16))
    items = [{'img': torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8), 'gt_seg': torch.randint(0, 3, (20, 30)),
              'meta': {'index': 0}},
             {'img': torch.randint(0, 256, (3, 24, 28), dtype=torch.uint8), 'gt_seg': torch.randint(0, 3, (24, 28)),
              'meta': {'index': 1}}]
    batch = seg_collate(items)
    assert batch['inputs'].shape == (2, 3, 24, 30)
    assert batch['data_samples'][0].metainfo['img_shape'] == (20, 30)
    assert (batch['data_samples'][0].gt_sem_seg[20:] == 255).all()
    model.train()
    data = model.data_preprocessor(batch, training=True)
    assert data['inputs'].shape == (2, 3, 32, 32)
    losses = model(**data, mode='loss')
    assert calls == [((2, 3, 32, 32), (2, 32, 32))] * 2  # main and auxiliary logits, resized to the input
    aux_logits = nn.functional.interpolate(model.network(data['inputs'])['aux'], size=(32, 32), mode='bilinear')
    target = torch.stack([s.gt_sem_seg for s in data['data_samples']])
    aux_ce = nn.functional.cross_entropy(aux_logits, target, ignore_index=255)
    torch.testing.assert_close(losses['aux_loss_ce'], 0.4 * aux_ce)  # mmseg's auxiliary weight
    torch.testing.assert_close(losses['aux_loss_half'], 0.4 * 0.5 * aux_ce)
    torch.testing.assert_close(losses['loss'], sum(v for k, v in losses.items() if k != 'loss'))
    total, log_vars = model.parse_losses(losses)
    assert torch.equal(total, losses['loss']) and set(log_vars) == set(losses)  # the parts are logged, not added again
    model.eval()
    with torch.no_grad():
        predictions = model(**model.data_preprocessor(seg_collate(items)), mode='predict')
    assert [tuple(p.pred_sem_seg.shape) for p in predictions] == [(20, 30), (24, 28)]
    assert [tuple(p.gt_sem_seg.shape) for p in predictions] == [(20, 30), (24, 28)]


@pytest.mark.heads
def test_predictions_follow_a_mask_kept_at_the_original_resolution():
    model = Segmentor(_TinyNet(2), num_classes=2).eval()
    item = {'img': torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8), 'gt_seg': torch.zeros(64, 96).long(),
            'meta': {'index': 0}}
    with torch.no_grad():
        (prediction,) = model(**model.data_preprocessor(seg_collate([item])), mode='predict')
    assert prediction.pred_sem_seg.shape == (64, 96) and prediction.seg_logits.shape == (2, 64, 96)


def _item(h, w, gt=None, index=0, num_classes=3):
    gen = torch.Generator().manual_seed(index)
    return {'img': torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen),
            'gt_seg': torch.randint(0, num_classes, (h, w), generator=gen) if gt is None else gt,
            'meta': {'index': index}}


@pytest.mark.heads
@pytest.mark.parametrize('size_divisor', [None, 32])
@pytest.mark.parametrize('segmentor', [Segmentor, MedicalSegmentor])
def test_a_full_resolution_mask_of_the_batch_size_is_not_cropped(segmentor, size_divisor):
    # Image 0 is 8x8 with its mask kept at 16x16, the size of the batch it shares with a 16x16 image: the mask was
    # taken for one padded with its image and cropped to its top-left 8x8 (a quarter of it scored).
    torch.manual_seed(0)
    model = segmentor(nn.Conv2d(3, 3, 1), num_classes=3,  # per pixel: the batch's padding changes no logit
                      data_preprocessor=dict(type=SegDataPreprocessor, size_divisor=size_divisor)).eval()
    full = _item(8, 8, gt=torch.randint(0, 3, (16, 16)))
    with torch.no_grad():
        (alone,) = model(**model.data_preprocessor(seg_collate([full])), mode='predict')
        batched = model(**model.data_preprocessor(seg_collate([full, _item(16, 16, index=1)])), mode='predict')
    assert torch.equal(batched[0].gt_sem_seg, full['gt_seg'])
    assert batched[0].pred_sem_seg.shape == (16, 16) and torch.equal(batched[0].pred_sem_seg, alone.pred_sem_seg)
    assert batched[1].pred_sem_seg.shape == batched[1].gt_sem_seg.shape == (16, 16)


@pytest.mark.heads
@pytest.mark.parametrize('img_size, mask_size, other_size', [
    ((8, 8), (4, 4), (8, 8)),  # half resolution: was padded into the top-left quarter and trained on
    ((8, 8), (8, 6), (8, 8)),
    ((8, 8), (16, 16), (16, 16)),  # kept at a larger resolution that is the batch's size: was taken as aligned
])
def test_loss_refuses_a_mask_of_another_size_than_its_image(img_size, mask_size, other_size):
    model = Segmentor(nn.Conv2d(3, 3, 1), num_classes=3).train()
    batch = seg_collate([_item(*other_size), _item(*img_size, gt=torch.zeros(mask_size, dtype=torch.long), index=1)])
    message = rf'sample 1: gt_sem_seg of shape {re.escape(str(mask_size))} does not match its image ' \
              rf'{re.escape(str(img_size))}'
    with pytest.raises(ValueError, match=message):
        model(**model.data_preprocessor(batch, training=True), mode='loss')
    with pytest.raises(ValueError, match=message.replace('sample 1', 'sample 0')):  # no img_shape: the input's size
        model(torch.randn(1, 3, *img_size), [BaseDataElement(gt_sem_seg=torch.zeros(mask_size).long())], mode='loss')


@pytest.mark.heads
@pytest.mark.parametrize('mode', ['loss', 'predict'])
@pytest.mark.parametrize('num_samples', [1, 4])
def test_data_samples_and_images_must_pair_up(num_samples, mode):
    model = Segmentor(nn.Conv2d(3, 3, 1), num_classes=3)
    samples = [BaseDataElement(gt_sem_seg=torch.zeros(8, 8, dtype=torch.long)) for _ in range(num_samples)]
    with pytest.raises(ValueError, match=f'{num_samples} data samples for 2 images'):
        model(torch.randn(2, 3, 8, 8), samples, mode=mode)


@pytest.mark.heads
@pytest.mark.parametrize('num_classes', [3, 300])
def test_mixed_sizes_are_padded_with_the_models_ignore_index(num_classes):
    # Collate pads masks with 255: with ignore_index=-1 that was reported as the user's "label 255", and with more
    # than 255 classes the padding was trained on as class 255.
    targets = []

    def loss(logits, target):
        targets.append(target)
        return nn.functional.cross_entropy(logits, target, ignore_index=-1)
    model = Segmentor(nn.Conv2d(3, num_classes, 1), num_classes=num_classes, loss=loss, ignore_index=-1)
    batch = seg_collate([_item(8, 8, num_classes=num_classes), _item(6, 4, index=1, num_classes=num_classes)])
    model.train_step(batch, OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1)))
    (target,) = targets
    assert (target[1, 6:] == -1).all() and (target[1, :, 4:] == -1).all()
    assert torch.equal(target[1, :6, :4], batch['data_samples'][1].gt_sem_seg[:6, :4])
    assert torch.equal(target[0], batch['data_samples'][0].gt_sem_seg)


@pytest.mark.heads
@pytest.mark.parametrize('mode', ['loss', 'predict'])
def test_mask_shapes_other_than_h_w_are_named(mode):
    model = Segmentor(nn.Conv2d(3, 3, 1), num_classes=3).train(mode == 'loss')
    with pytest.raises(ValueError, match=r'sample 0: gt_sem_seg must be \[H, W\] \(or \[1, H, W\]\), got \[3, 8, 8\]'):
        model(**model.data_preprocessor(seg_collate([_item(8, 8, gt=torch.zeros(3, 8, 8).long())])), mode=mode)
    model(**model.data_preprocessor(seg_collate([_item(8, 8, gt=torch.zeros(1, 8, 8).long())])), mode=mode)


@pytest.mark.heads
def test_float_masks_must_hold_whole_labels():
    mask = torch.zeros(8, 8)
    mask[2, 3] = 1.7  # was truncated to class 1
    with pytest.raises(ValueError, match=r'item 0: gt_seg holds the non-integer label 1\.7 '):
        seg_collate([_item(8, 8, gt=mask)])
    model = Segmentor(nn.Conv2d(3, 3, 1), num_classes=3)
    with pytest.raises(ValueError, match=r'sample 0: gt_sem_seg holds the non-integer label 1\.7 '):
        model(torch.randn(1, 3, 8, 8), [BaseDataElement(gt_sem_seg=mask)], mode='loss')
    gt = seg_collate([_item(8, 8, gt=mask.round())])['data_samples'][0].gt_sem_seg  # whole floats are labels
    assert gt.dtype == torch.uint8 and gt[2, 3] == 2  # sent compact; SegDataPreprocessor widens it to int64


@pytest.mark.heads
def test_data_preprocessor_grey_normalisation_and_padding():
    pre = SegDataPreprocessor(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), size_divisor=8)
    images = torch.full((1, 1, 5, 6), 255, dtype=torch.uint8)
    sample = BaseDataElement(gt_sem_seg=torch.ones(5, 6).long())
    out = pre({'inputs': images, 'data_samples': [sample]})
    assert out['inputs'].shape == (1, 3, 8, 8)
    torch.testing.assert_close(out['inputs'][0, :, :5, :6], torch.full((3, 5, 6), 2.0))
    assert (out['inputs'][0, :, 5:] == 0).all()
    gt = out['data_samples'][0].gt_sem_seg
    assert gt.shape == (8, 8) and (gt[:5, :6] == 1).all() and (gt[5:] == 255).all() and (gt[:, 6:] == 255).all()
    with pytest.raises(ValueError, match='channels'):
        SegDataPreprocessor(mean=(0.5, 0.5, 0.5), std=(1, 1, 1))({'inputs': torch.zeros(1, 2, 4, 4), 'data_samples':
                                                                  None})


def _metric_results(metric, pairs):
    for pred, gt in pairs:
        metric.process(None, [{'pred_sem_seg': pred, 'gt_sem_seg': gt}])
    return metric.compute_metrics(metric.results)


@pytest.mark.heads
def test_iou_metric_on_a_hand_counted_example():
    metric = IoUMetric(num_classes=4)
    metric.dataset_meta = {'classes': ('a', 'b', 'c', 'd')}
    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 2, 3]])
    got = _metric_results(metric, [(pred, gt)])
    # Labelled pixels: 5, 4 right. IoU a = 1/2, b = 2/3, c = 1, d absent (not averaged); acc a = 1/2, b = c = 1.
    assert got['aAcc'] == pytest.approx(80.0)
    assert got['mIoU'] == pytest.approx(100 * (1 / 2 + 2 / 3 + 1) / 3)
    assert got['mAcc'] == pytest.approx(100 * (1 / 2 + 1 + 1) / 3)
    assert got['IoU.b'] == pytest.approx(100 * 2 / 3) and np.isnan(got['IoU.d'])
    with pytest.raises(ValueError, match='outside 0..3'):
        metric.process(None, [{'pred_sem_seg': pred, 'gt_sem_seg': torch.tensor([[7, 0, 0], [0, 0, 0]])}])


@pytest.mark.heads
@pytest.mark.parametrize('pred_shape', [(2, 8), (3, 3), (2, 4, 4)])
def test_iou_metric_refuses_a_prediction_of_another_shape(pred_shape):
    # (2, 8) has the ground truth's pixel count: it was reshaped to 4x4 and scored pixel against the wrong pixel.
    metric = IoUMetric(num_classes=2)
    gt = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf'prediction {re.escape(str(pred_shape))} and ground truth \(4, 4\) differ'):
        metric.process(None, [{'pred_sem_seg': torch.zeros(pred_shape, dtype=torch.long), 'gt_sem_seg': gt}])
    metric.process(None, [{'pred_sem_seg': torch.zeros(1, 4, 4, dtype=torch.long), 'gt_sem_seg': gt}])
    assert int(metric.results[0].sum()) == 16


@pytest.mark.heads
@pytest.mark.parametrize('bad', [3, -1])
def test_iou_metric_refuses_predicted_labels_outside_its_classes(bad):
    # a model of more classes than the metric counts: clamped, class 3 scored as class 2 and this gave mIoU 100
    metric = IoUMetric(num_classes=3)
    gt = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match=rf'pred_sem_seg holds labels outside 0..2: \[{bad}\]'):
        metric.process(None, [{'pred_sem_seg': torch.tensor([[0, 1], [1, bad]]), 'gt_sem_seg': gt}])
    # a pixel the ground truth ignores is not scored, whatever its prediction
    metric.process(None, [{'pred_sem_seg': torch.tensor([[0, 1], [1, bad]]), 'gt_sem_seg': torch.tensor([[0, 1],
                                                                                                         [1, 255]])}])
    assert int(metric.results[0].sum()) == 3


@pytest.mark.heads
def test_iou_metric_names_a_bad_class_count_and_an_empty_run():
    with pytest.raises(ValueError, match='num_classes must be positive'):
        IoUMetric(num_classes=0)
    with pytest.raises(ValueError, match='IoUMetric got no predictions'):
        IoUMetric(num_classes=3).compute_metrics([])


@pytest.mark.heads
def test_iou_metric_matches_sklearn_over_batches():
    from sklearn.metrics import confusion_matrix
    rng = np.random.default_rng(0)
    k, pairs, all_gt, all_pred = 6, [], [], []
    for _ in range(5):
        gt = rng.integers(0, k, size=(17, 23))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, np.clip(gt, 0, k - 1), rng.integers(0, k, size=gt.shape))
        pairs.append((torch.from_numpy(pred), torch.from_numpy(gt)))
        keep = gt != 255
        all_gt.append(gt[keep])
        all_pred.append(pred[keep])
    cm = confusion_matrix(np.concatenate(all_gt), np.concatenate(all_pred), labels=list(range(k))).astype(float)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    got = _metric_results(IoUMetric(num_classes=k), pairs)
    assert got['mIoU'] == pytest.approx(100 * iou.mean())
    assert got['aAcc'] == pytest.approx(100 * np.diag(cm).sum() / cm.sum())
    assert got['mAcc'] == pytest.approx(100 * (np.diag(cm) / cm.sum(1)).mean())
    for c in range(k):
        assert got[f'IoU.{c}'] == pytest.approx(100 * iou[c])


def _write_ade(root: Path, split='training', n=3, size=(40, 52)):
    from PIL import Image
    (root / 'images' / split).mkdir(parents=True)
    (root / 'annotations' / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(
            root / 'images' / split / f'ADE_{i:03d}.jpg')
        label = rng.integers(0, 151, size=size).astype(np.uint8)
        label[0, :3] = (0, 1, 150)
        Image.fromarray(label).save(root / 'annotations' / split / f'ADE_{i:03d}.png')


@pytest.mark.heads
def test_ade20k_layout_and_label_reduction(tmp_path):
    from PIL import Image
    _write_ade(tmp_path)
    dataset = ADE20KDataset(str(tmp_path), 'training')
    assert len(dataset) == 3 and len(dataset.metainfo['classes']) == 150
    item = dataset[0]
    raw = np.asarray(Image.open(tmp_path / 'annotations/training/ADE_000.png')).astype(np.int64)
    expected = np.where(raw == 0, 255, raw - 1)
    assert item['gt_seg'].dtype == torch.int64 and (item['gt_seg'].numpy() == expected).all()
    assert item['gt_seg'][0, :3].tolist() == [255, 0, 149]
    assert item['img'].shape == (3, 40, 52) and item['img'].dtype == torch.uint8
    assert item['meta']['index'] == 0 and item['meta']['img_path'].endswith('ADE_000.jpg')
    repeated = ADE20KDataset(str(tmp_path), 'training', repeat_times=2)
    assert len(repeated) == 6 and repeated[4]['meta']['index'] == 1
    test_set = ADE20KDataset(str(tmp_path), 'training', gt_original_size=True,
                             pipeline=segmentation_transforms(False, 32, img_scale=(64, 32)))
    item = test_set[0]
    assert item['img'].shape == (3, 32, 42) and item['gt_seg'].shape == (40, 52)
    with pytest.raises(FileNotFoundError, match='is not a folder'):
        ADE20KDataset(str(tmp_path), 'validation')
    (tmp_path / 'annotations/training/ADE_002.png').unlink()
    with pytest.raises(FileNotFoundError, match='no label map'):
        SegFolderDataset(tmp_path / 'images/training', tmp_path / 'annotations/training', classes=('a',))


@pytest.mark.heads
def test_synthetic_shapes_are_deterministic_and_labelled():
    a, b = SyntheticShapesDataset(8, 48, 5, seed=3), SyntheticShapesDataset(8, 48, 5, seed=3)
    for i in (0, 5):
        assert torch.equal(a[i]['img'], b[i]['img']) and torch.equal(a[i]['gt_seg'], b[i]['gt_seg'])
    assert not torch.equal(a[0]['img'], SyntheticShapesDataset(8, 48, 5, seed=4)[0]['img'])
    labels = torch.cat([a[i]['gt_seg'].flatten() for i in range(8)])
    assert set(labels.unique().tolist()) == {0, 1, 2, 3, 4}
    assert a.metainfo['classes'] == ('background', 'disk', 'rectangle', 'triangle', 'ring')
    with pytest.raises(ValueError, match='num_classes'):
        SyntheticShapesDataset(4, 32, 9)


@pytest.mark.heads
def test_training_transforms_keep_image_and_mask_aligned():
    # Blocks whose grey level encodes their label: after random resize, crop, flip and padding, the label read
    # back from the image agrees with the mask wherever neither is at a block edge.
    from scipy.ndimage import maximum_filter, minimum_filter
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 4, size=(6, 8))
    mask = np.kron(blocks, np.ones((12, 12), dtype=np.int64)).astype(np.uint8)
    image = np.repeat((mask * 60 + 20)[..., None], 3, axis=-1).astype(np.uint8)
    padded, misaligned = 0, []
    for hflip in (0.0, 1.0):
        pipeline = segmentation_transforms(True, crop_size=(80, 40), img_scale=(96, 72), hflip=hflip,
                                           photometric=False, pad_fill=(0, 0, 0))
        for seed in range(6):
            pipeline.set_random_seed(seed)
            out = pipeline(image=image, mask=mask)
            img, seg = out['image'], out['mask']
            assert img.shape == (80, 40, 3) and seg.shape == (80, 40)
            decoded = np.clip(np.round((img[..., 0].astype(float) - 20) / 60), 0, 3)
            labelled = seg != 255
            padded += int((~labelled).any())
            assert (img[~labelled] == 0).all()  # the image is padded where the mask is
            # Away from label edges (where bilinear image and nearest mask differ by design) they agree exactly.
            labels = seg.astype(int)
            inner = labelled & (minimum_filter(labels, 3) == maximum_filter(labels, 3))
            assert inner.mean() > 0.4
            assert (decoded[inner] == seg[inner]).all()
            both = inner & labelled[:, ::-1]
            misaligned.append((decoded[both] == seg[:, ::-1][both]).mean())
    assert padded  # some draws were smaller than the crop
    assert np.mean(misaligned) < 0.6  # a mask flipped without its image would fail the check above


@pytest.mark.heads
def test_overlay_hook_writes_side_by_side_pngs(tmp_path):
    from PIL import Image
    hook = SegPredictionImagesHook(str(tmp_path / 'shown'), max_images=3)
    images = torch.randint(0, 256, (2, 3, 16, 20), dtype=torch.uint8)
    outputs = [BaseDataElement(pred_sem_seg=torch.randint(0, 3, (16, 20)), seg_logits=torch.zeros(3, 16, 20),
                               gt_sem_seg=torch.randint(0, 3, (16, 20)), metainfo={'index': i}) for i in range(2)]

    class Runner:
        pass
    hook.after_test_iter(Runner(), 0, {'inputs': images}, outputs)
    hook.after_test_iter(Runner(), 1, {'inputs': images}, outputs)
    written = sorted((tmp_path / 'shown').glob('*.png'))
    assert len(written) == 3
    assert Image.open(written[0]).size == (2 * 20 + 4, 16)


SMOKE = 'configs/segmentation/fpn_resnet_attn_synthetic_shapes.py'


@pytest.mark.tools
def test_train_and_test_tools_on_synthetic_shapes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    env.pop('PYTEST_XDIST_WORKER', None)
    small = ['train_cfg.max_iters=6', 'train_cfg.val_interval=6', 'default_hooks.checkpoint.interval=6',
             'param_scheduler.0.end=2', 'param_scheduler.1.begin=2', 'param_scheduler.1.end=6',
             'train_dataloader.batch_size=4', 'val_dataloader.dataset.num_samples=6',
             'test_dataloader.dataset.num_samples=6']
    work = tmp_path / 'run'
    proc = subprocess.run([sys.executable, 'tools/train.py', SMOKE, '--work-dir', str(work), '--cfg-options',
                           *small], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'mIoU' in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, 'tools/test.py', SMOKE, str(work / 'iter_6.pth'), '--work-dir',
                           str(tmp_path / 't'), '--show-dir', str(tmp_path / 'shown'), '--cfg-options', *small],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if 'test metrics:' in ln)
    assert "'mIoU': " in line and "'IoU.disk': " in line
    assert 0.0 <= float(line.split("'mIoU': ")[1].split(',')[0]) <= 100.0
    assert len(list((tmp_path / 'shown').glob('0*.png'))) == 6  # one drawing per sample, and their overview
    assert (tmp_path / 'shown' / 'overview.png').is_file()


def _labelled_item(h, w, labels, index=0, gt_size=None):
    """An item whose mask draws from ``labels`` (ignore values included)."""
    gen = torch.Generator().manual_seed(index)
    labels = torch.as_tensor(labels)
    gt = labels[torch.randint(0, len(labels), gt_size or (h, w), generator=gen)]
    return {'img': torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen), 'gt_seg': gt,
            'meta': {'index': index}}


@pytest.mark.heads
@pytest.mark.parametrize('labels, dtype', [
    ([0, 1, 2, 255], torch.uint8),  # the ignore index 255 fits uint8 exactly
    ([0, 1, 255, 256, 299], torch.int16),  # 300 classes: 299 wrapped in uint8 would read 43
    ([-1, 0, 1, 2], torch.int16),  # ignore_index=-1
    ([0, 1, 40000], torch.int32),
])
def test_collate_sends_masks_compact_in_one_block(labels, dtype):
    # seg_collate sent every mask as its own int64 tensor: 8 bytes a pixel through the loader's shared memory
    items = [_labelled_item(8, 12, labels), _labelled_item(6, 10, labels, index=1)]
    samples = seg_collate(items)['data_samples']
    assert [s.gt_sem_seg.dtype for s in samples] == [dtype, dtype]
    assert len({s.gt_sem_seg.untyped_storage().data_ptr() for s in samples}) == 1  # views of one stacked tensor
    assert torch.equal(samples[0].gt_sem_seg.long(), items[0]['gt_seg'])
    assert torch.equal(samples[1].gt_sem_seg[:6, :10].long(), items[1]['gt_seg'])
    assert (samples[1].gt_sem_seg[6:] == 255).all() and (samples[1].gt_sem_seg[:, 10:] == 255).all()
    # masks kept at their own resolution cannot be stacked: still compact, one tensor each
    kept = seg_collate([_labelled_item(8, 8, labels, gt_size=(16, 16)), _labelled_item(8, 8, labels, index=1)])
    assert [tuple(s.gt_sem_seg.shape) for s in kept['data_samples']] == [(16, 16), (8, 8)]
    assert {s.gt_sem_seg.dtype for s in kept['data_samples']} == {dtype}
    with pytest.raises(ValueError, match='item 0: gt_seg holds the non-integer label inf'):  # has no integer dtype
        seg_collate([_labelled_item(8, 8, [0.0, float('inf')])])


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return _labelled_item(8, 8, [0, 1, 299], index=index)


@pytest.mark.heads
def test_compact_masks_cross_a_loader_worker_as_one_block():
    loader = torch.utils.data.DataLoader(_Items(), batch_size=4, num_workers=1, collate_fn=seg_collate)
    (batch,) = list(loader)
    samples = batch['data_samples']
    assert {s.gt_sem_seg.dtype for s in samples} == {torch.int16}
    assert len({s.gt_sem_seg.untyped_storage().data_ptr() for s in samples}) == 1
    assert all(torch.equal(s.gt_sem_seg.long(), _Items()[i]['gt_seg']) for i, s in enumerate(samples))


@pytest.mark.heads
@pytest.mark.parametrize('num_classes, ignore_index', [(3, 255), (300, 255), (300, -1)])
def test_compact_masks_give_the_int64_losses_predictions_and_metrics(num_classes, ignore_index):
    # the same batch with every mask widened to int64 in the collate (as it was sent before) is the reference
    torch.manual_seed(0)
    labels = [*range(num_classes), ignore_index]
    items = [_labelled_item(20, 30, labels), _labelled_item(24, 28, labels, index=1)]
    model = Segmentor(_TinyNet(num_classes), num_classes=num_classes, ignore_index=ignore_index,
                      data_preprocessor=dict(type=SegDataPreprocessor, size_divisor=16))
    metric = IoUMetric(num_classes=num_classes, ignore_index=ignore_index, classwise=False)

    def run(widen):
        batch = seg_collate(items)
        if widen:
            batch['data_samples'] = [BaseDataElement(gt_sem_seg=s.gt_sem_seg.long(), metainfo=s.metainfo)
                                     for s in batch['data_samples']]
        else:
            assert batch['data_samples'][0].gt_sem_seg.dtype == (torch.uint8 if num_classes < 256 and
                                                                 ignore_index == 255 else torch.int16)
        model.train()
        data = model.data_preprocessor(batch, training=True)
        assert all(s.gt_sem_seg.dtype == torch.long for s in data['data_samples'])
        losses = model(**data, mode='loss')
        model.eval()
        with torch.no_grad():
            predictions = model(**model.data_preprocessor(batch), mode='predict')
        metric.results.clear()
        metric.process(None, [p.to_dict() for p in predictions])
        return losses, predictions, metric.compute_metrics(metric.results)

    (losses, predictions, metrics), (ref_losses, ref_predictions, ref_metrics) = run(False), run(True)
    assert losses.keys() == ref_losses.keys() and all(torch.equal(losses[k], ref_losses[k]) for k in losses)
    for got, ref in zip(predictions, ref_predictions):
        for key in ('gt_sem_seg', 'pred_sem_seg', 'seg_logits'):
            assert got.get(key).dtype == ref.get(key).dtype and torch.equal(got.get(key), ref.get(key))
    np.testing.assert_equal(metrics, ref_metrics)


@pytest.mark.heads
def test_a_photo_turned_by_its_exif_tag_against_a_raw_mask_is_named(tmp_path):
    # load_image turns photos by their EXIF orientation; a mask drawn on the raw bitmap then has the swapped size,
    # and the error says so instead of only "differ in size"
    from PIL import Image
    _write_ade(tmp_path, n=1)
    path = tmp_path / 'images' / 'training' / 'ADE_000.jpg'
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise
    Image.open(path).save(path, exif=exif.tobytes())
    with pytest.raises(ValueError, match='differ in size.*sizes are swapped.*EXIF orientation'):
        ADE20KDataset(str(tmp_path), 'training')[0]
    from visionattn.data.base import orientation_hint
    assert orientation_hint((40, 52), (40, 52)) == orientation_hint((30, 30), (30, 30)) == ''
    assert orientation_hint((52, 40, 3), (40, 52)) != ''
