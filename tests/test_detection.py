"""Object detection: DETR's augmentation keeps boxes on their objects, the synthetic COCO shapes are a valid COCO
file, COCO AP against pycocotools itself, category-id mapping, collate and padding masks, the Detector on a tiny
Focus-DETR, tools/train.py + tools/test.py --show-dir on the synthetic shapes, and clear errors for bad data."""
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
pytest.importorskip('pycocotools')
from mmengine.structures import BaseDataElement, InstanceData  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402
from visionattn.heads.detection.data import (  # noqa: E402
    CocoDetection,
    SyntheticCocoDetection,
    detection_transforms,
    make_synthetic_coco,
    shortest_edge_size,
)
from visionattn.heads.detection.evaluation import CocoMetric  # noqa: E402
from visionattn.heads.detection.task import (  # noqa: E402
    DetDataPreprocessor,
    Detector,
    DetPredictionImagesHook,
    det_collate,
)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = 'configs/detection/focus_detr_r18_synthetic_shapes.py'
SMALL_SCALES = dict(scales=(96, 112, 128, 144, 160), max_size=213, crop_scales=(96, 112, 128), crop_size=(60, 100))


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    """A 12-image synthetic COCO set: (annotation file, image folder)."""
    root = tmp_path_factory.mktemp('synthetic_coco')
    ann_file = make_synthetic_coco(root, num_images=12, size=96, num_classes=3, seed=3)
    return ann_file, root / 'images'


def _tiny_focus_detr(num_classes=3):
    from visionattn.heads.detection import FocusDETR
    return FocusDETR(backbone='resnet18', num_classes=num_classes, pretrained=False, num_queries=20, embed_dims=64,
                     encoder=dict(num_layers=2, ffn_dims=128, cascade_ratios=(1.0, 0.8), topk_sa=16),
                     decoder=dict(num_layers=2, ffn_dims=128), dn_number=4, num_select=20)


# --- transforms --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size, short, max_size, expected', [
    ((480, 640), 800, 1333, (800, 1067)),  # shorter side to 800, 640 * 800 / 480 = 1066.7 rounds up
    ((500, 2000), 800, 1333, (333, 1333)),  # the longer side bound wins: 500 * 1333 / 2000 = 333.25
    ((427, 640), 800, 1333, (800, 1199)),  # 1199.06
    ((100, 100), 128, None, (128, 128)),
])
def test_shortest_edge_rule(size, short, max_size, expected):
    assert shortest_edge_size(*size, short, max_size) == expected


def _bright_box(image: np.ndarray):
    ys, xs = np.nonzero(image[..., 0] > 127)
    if len(ys) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_training_pipeline_keeps_boxes_on_their_objects():
    # A white box drawn on a black image must stay where its transformed coordinates say, whatever the flip,
    # resize and crop drawn: compare with the bounding box of the bright pixels.
    image = np.zeros((150, 200, 3), np.uint8)
    box = np.array([[30, 40, 110, 95]], np.float32)
    image[40:95, 30:110] = 255
    pipeline = detection_transforms(True, **SMALL_SCALES)
    flips = cropped = 0
    for seed in range(40):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, bboxes=box, labels=np.array([2]))
        measured = _bright_box(out['image'])
        h, w = out['image'].shape[:2]
        if len(out['bboxes']) == 0:  # cut off by the crop
            assert measured is None or (measured[2:] - measured[:2]).min() <= 1
            cropped += 1
            continue
        assert out['labels'] == [2]
        got = np.asarray(out['bboxes'][0], np.float32)
        assert measured is not None
        np.testing.assert_allclose(got, measured, atol=1.5, err_msg=f'seed {seed}, image {w}x{h}')
        assert 0 <= got[0] < got[2] <= w and 0 <= got[1] < got[3] <= h
        flips += (got[0] + got[2]) / 2 / w > 0.5  # the box's centre is at 0.35 of the width: right of 0.5 flipped
    assert 0 < flips < 40 - cropped


def test_pipeline_is_seeded_and_test_pipeline_is_a_resize():
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    box = np.array([[30, 40, 110, 95]], np.float32)
    pipeline = detection_transforms(True, **SMALL_SCALES)
    outs = []
    for _ in range(2):
        pipeline.set_random_seed(7)
        outs.append(pipeline(image=image, bboxes=box, labels=np.array([0])))
    np.testing.assert_array_equal(outs[0]['image'], outs[1]['image'])
    test = detection_transforms(False, test_scale=120, max_size=1333)
    out = test(image=image, bboxes=box, labels=np.array([0]))
    assert out['image'].shape[:2] == (120, 160)
    np.testing.assert_allclose(out['bboxes'][0], box[0] * 0.8, atol=1e-4)


# --- datasets ----------------------------------------------------------------------------------------------------

def test_synthetic_coco_is_a_valid_deterministic_coco_file(synthetic, tmp_path):
    ann_file, img_dir = synthetic
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    assert len(coco.imgs) == 12 and sorted(coco.getCatIds()) == [1, 3, 5]
    assert [c['name'] for c in coco.loadCats([1, 3, 5])] == ['rectangle', 'ellipse', 'triangle']
    for img_id, info in coco.imgs.items():
        anns = coco.imgToAnns[img_id]
        assert 1 <= len(anns) <= 5 and (img_dir / info['file_name']).is_file()
        for ann in anns:
            x, y, w, h = ann['bbox']
            assert ann['iscrowd'] == 0 and 0 < ann['area'] <= w * h
            assert 0 <= x and 0 <= y and x + w <= info['width'] and y + h <= info['height']
    sizes = np.array([np.sqrt(a['area']) for a in coco.anns.values()])
    assert sizes.min() < 16 and sizes.max() > 30  # several sizes
    again = make_synthetic_coco(tmp_path / 'again', num_images=12, size=96, num_classes=3, seed=3)
    assert json.loads(again.read_text()) == json.loads(ann_file.read_text())
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(img_dir / '000005.png')),
                          np.asarray(Image.open(tmp_path / 'again' / 'images' / '000005.png')))


def test_category_ids_round_trip_and_items(synthetic):
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir))
    assert dataset.cat_ids == (1, 3, 5) and dataset.classes == ('rectangle', 'ellipse', 'triangle')
    assert dataset.metainfo['cat_ids'] == (1, 3, 5)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    for index in range(len(dataset)):
        item = dataset[index]
        meta = item['meta']
        anns = coco.imgToAnns[meta['img_id']]
        assert item['img'].dtype == torch.uint8 and item['img'].shape == (3, 96, 96)
        assert dataset.label_to_cat_id(item['gt_labels'].tolist()) == [a['category_id'] for a in anns]
        expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)], np.float32)
        np.testing.assert_allclose(item['gt_bboxes'].numpy(), expected)
        assert meta['ori_shape'] == meta['img_shape'] == (96, 96) and meta['scale_factor'] == (1.0, 1.0)
        assert [i['bbox_label'] for i in meta['instances']] == item['gt_labels'].tolist()


def _write_coco(path: Path, images, annotations, categories):
    path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': categories}))
    return path


def test_crowd_boxes_and_empty_images(tmp_path):
    from PIL import Image
    (tmp_path / 'img').mkdir()
    for name in ('a.png', 'b.png', 'c.png'):
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / 'img' / name)
    images = [{'id': i + 1, 'file_name': n, 'width': 50, 'height': 40} for i, n in enumerate(('a.png', 'b.png',
                                                                                            'c.png'))]
    annotations = [
        {'id': 1, 'image_id': 1, 'category_id': 7, 'bbox': [1, 2, 10, 12], 'area': 120, 'iscrowd': 0},
        {'id': 2, 'image_id': 1, 'category_id': 9, 'bbox': [20, 5, 20, 30], 'area': 600, 'iscrowd': 1},
        {'id': 3, 'image_id': 2, 'category_id': 9, 'bbox': [0, 0, 30, 30], 'area': 900, 'iscrowd': 1},
        {'id': 4, 'image_id': 1, 'category_id': 9, 'bbox': [40, 30, 20, 20], 'area': 400, 'iscrowd': 0},  # clipped
        {'id': 5, 'image_id': 1, 'category_id': 7, 'bbox': [5, 5, 0.5, 9], 'area': 4, 'iscrowd': 0},  # too thin
    ]
    ann = _write_coco(tmp_path / 'ann.json', images, annotations,
                      [{'id': 9, 'name': 'nine'}, {'id': 7, 'name': 'seven'}])
    dataset = CocoDetection(str(ann), str(tmp_path / 'img'))
    assert len(dataset) == 3 and dataset.classes == ('seven', 'nine')
    item = dataset[0]
    assert item['gt_labels'].tolist() == [0, 1]  # the crowd box is not a target
    np.testing.assert_allclose(item['gt_bboxes'].numpy(), [[1, 2, 11, 14], [40, 30, 50, 40]])
    assert [i['ignore_flag'] for i in item['meta']['instances']] == [0, 1, 0]
    assert dataset[1]['gt_bboxes'].shape == (0, 4)  # crowd only
    filtered = CocoDetection(str(ann), str(tmp_path / 'img'), filter_empty_gt=True)
    assert [r['img_id'] for r in filtered.records] == [1]
    assert len(CocoDetection('ann.json', 'img', data_root=str(tmp_path), max_samples=2)) == 2


def test_bad_inputs_raise_clear_errors(synthetic, tmp_path):
    ann_file, img_dir = synthetic
    with pytest.raises(FileNotFoundError, match='annotation file .*missing.json'):
        CocoDetection(str(tmp_path / 'missing.json'), str(img_dir))
    with pytest.raises(FileNotFoundError, match='image folder'):
        CocoDetection(str(ann_file), str(tmp_path / 'no_images'))
    with pytest.raises(FileNotFoundError, match='data_root'):
        CocoDetection('a.json', 'img', data_root=str(tmp_path / 'nowhere'))
    (tmp_path / 'bad.json').write_text('{"images": [')
    with pytest.raises(ValueError, match='not a valid JSON'):
        CocoDetection(str(tmp_path / 'bad.json'), str(img_dir))
    (tmp_path / 'images').mkdir()
    dataset = CocoDetection(str(ann_file), str(tmp_path / 'images'))  # the folder exists, its images do not
    with pytest.raises(FileNotFoundError, match=r'000001.png \(COCO image id 1\) does not exist'):
        dataset[0]
    with pytest.raises(ValueError, match='no categories named'):
        CocoDetection(str(ann_file), str(img_dir), classes=['dog'])
    # no class dropped every box; a repeated one mapped its category to the later label, the first never used
    for classes in ([], ['ellipse', 'ellipse']):
        with pytest.raises(ValueError, match='classes must name distinct categories'):
            CocoDetection(str(ann_file), str(img_dir), classes=classes)


def test_synthetic_dataset_is_generated_once(tmp_path):
    dataset = SyntheticCocoDetection(str(tmp_path), 'val', num_images=4, img_size=64, num_classes=2, seed=5)
    assert len(dataset) == 4 and dataset.classes == ('rectangle', 'ellipse')
    ann = Path(dataset.ann_file)
    stamp = ann.stat().st_mtime_ns
    again = SyntheticCocoDetection(str(tmp_path), 'val', num_images=4, img_size=64, num_classes=2, seed=5)
    assert again.ann_file == str(ann) and ann.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if '.tmp-' in p.name]


# --- collate, preprocessing, metric ---------------------------------------------------------------------------

def _item(h, w, boxes, labels, img_id):
    return {'img': torch.full((3, h, w), 200, dtype=torch.uint8),
            'gt_bboxes': torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            'gt_labels': torch.tensor(labels, dtype=torch.long),
            'meta': {'img_id': img_id, 'ori_shape': (2 * h, 2 * w), 'scale_factor': (0.5, 0.5)}}


def test_collate_pads_and_builds_the_pad_mask():
    batch = det_collate([_item(30, 40, [[1, 2, 10, 20]], [1], 5), _item(36, 28, [], [], 6)])
    assert batch['inputs'].shape == (2, 3, 36, 40)
    assert batch['inputs'][0, :, 30:].eq(0).all() and batch['inputs'][1, :, :, 28:].eq(0).all()
    first, second = batch['data_samples']
    assert first.img_shape == (30, 40) and second.img_shape == (36, 28) and first.img_id == 5
    assert first.gt_instances.bboxes.tolist() == [[1, 2, 10, 20]] and second.gt_instances.bboxes.shape == (0, 4)
    assert second.gt_instances.labels.dtype == torch.long
    pre = DetDataPreprocessor(size_divisor=32)
    data = pre(batch)
    assert data['inputs'].shape == (2, 3, 64, 64) and data['inputs'].dtype == torch.float32
    mask = data['pad_mask']
    assert mask.shape == (2, 64, 64) and mask.dtype == torch.bool
    assert not mask[0, :30, :40].any() and mask[0, 30:].all() and mask[0, :, 40:].all()
    assert not mask[1, :36, :28].any() and mask[1, :, 28:].all()
    torch.testing.assert_close(data['inputs'][0, :, 0, 0], (200 / 255 - torch.tensor([0.485, 0.456, 0.406]))
                               / torch.tensor([0.229, 0.224, 0.225]))
    assert data['inputs'][0, :, 50, 50].eq(0).all()  # padding is 0 after normalisation
    assert data['data_samples'][0].pad_shape == (64, 64)
    with pytest.raises(ValueError, match='empty batch'):
        det_collate([])


def _gt_predictions(ann_file, cat_ids, shift=0.0, drop_every=0):
    """Predictions equal to the ground truth of every image (shifted by ``shift`` x the box width)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
    label_of = {c: i for i, c in enumerate(cat_ids)}
    samples = []
    for img_id, info in sorted(coco.imgs.items()):
        anns = [a for a in coco.imgToAnns[img_id] if not a['iscrowd']]
        boxes = torch.tensor([[x + shift * w, y, x + w + shift * w, y + h] for x, y, w, h in
                              (a['bbox'] for a in anns)], dtype=torch.float32).reshape(-1, 4)
        scores = torch.linspace(0.9, 0.5, len(anns))
        labels = torch.tensor([label_of[a['category_id']] for a in anns], dtype=torch.long)
        if drop_every:
            keep = torch.arange(len(anns)) % drop_every != 0
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        samples.append(BaseDataElement(pred_instances=InstanceData(bboxes=boxes, scores=scores, labels=labels),
                                       metainfo={'img_id': img_id, 'ori_shape': (info['height'], info['width'])}))
    return samples


def _evaluate(metric, dataset, samples):
    metric.dataset_meta = dataset.metainfo
    metric.process(None, [s.to_dict() for s in samples])
    return metric.evaluate(len(samples))


def test_coco_metric_against_pycocotools(synthetic, tmp_path):
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir))
    perfect = _evaluate(CocoMetric(), dataset, _gt_predictions(ann_file, dataset.cat_ids))
    assert set(perfect) == {f'coco/{k}' for k in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s',
                                                    'bbox_mAP_m', 'bbox_mAP_l')}
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert perfect[key] == pytest.approx(1.0)
    prefix = tmp_path / 'results'
    metric = CocoMetric(outfile_prefix=str(prefix))
    shifted = _evaluate(metric, dataset, _gt_predictions(ann_file, dataset.cat_ids, shift=0.2, drop_every=3))
    assert 0.0 < shifted['coco/bbox_mAP'] < 0.9 and shifted['coco/bbox_mAP_50'] < 1.0
    # The same detections through pycocotools directly.
    detections = json.loads(Path(f'{prefix}.bbox.json').read_text())
    assert {d['category_id'] for d in detections} <= {1, 3, 5}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
        evaluator = COCOeval(coco, coco.loadRes(detections), 'bbox')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    for key, value in zip(('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l'),
                          evaluator.stats):
        assert shifted[f'coco/{key}'] == pytest.approx(value)
    # The ground truth carried in the samples (the dataset's 'instances') gives the same numbers.
    samples = _gt_predictions(ann_file, dataset.cat_ids, shift=0.2, drop_every=3)
    for sample, index in zip(samples, range(len(dataset))):
        sample.set_metainfo({'instances': dataset[index]['meta']['instances']})
    from_samples = _evaluate(CocoMetric(use_ann_file=False, classwise=True), dataset, samples)
    for key, value in shifted.items():
        assert from_samples[key] == pytest.approx(value)
    assert 'coco/ellipse_precision' in from_samples


def test_coco_metric_evaluates_only_the_images_seen(synthetic):
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir))
    samples = _gt_predictions(ann_file, dataset.cat_ids)[:4]  # a subset (max_samples, or one process's share)
    assert _evaluate(CocoMetric(), dataset, samples)['coco/bbox_mAP'] == pytest.approx(1.0)
    empty = [BaseDataElement(pred_instances=InstanceData(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                                         labels=torch.zeros(0, dtype=torch.long)),
                             metainfo=s.metainfo) for s in samples]
    assert _evaluate(CocoMetric(), dataset, empty)['coco/bbox_mAP'] == 0.0


def test_coco_metric_ap_keys_follow_the_last_proposal_num(synthetic):
    # pycocotools' summary takes bbox_mAP at 100 detections whatever maxDets are: -1 (silently) without a 100, and
    # an IndexError with fewer than three
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir))
    metrics = _evaluate(CocoMetric(proposal_nums=(1, 10, 300)), dataset, _gt_predictions(ann_file, dataset.cat_ids))
    assert metrics['coco/bbox_mAP'] == pytest.approx(1.0) and metrics['coco/bbox_mAP_50'] == pytest.approx(1.0)
    for bad in [(100,), (100, 10, 1), (0, 10, 100)]:
        with pytest.raises(ValueError, match='proposal_nums must be three increasing'):
            CocoMetric(proposal_nums=bad)


def test_coco_metric_refuses_non_finite_predictions(synthetic):
    # pycocotools matches a NaN box to any ground truth (its IoU fails the "< threshold" test): AP 1.0 for garbage
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir))
    for field in ('bboxes', 'scores'):
        samples = _gt_predictions(ann_file, dataset.cat_ids)
        getattr(samples[1].pred_instances, field)[:] = float('nan')
        with pytest.raises(ValueError, match=f'image {samples[1].img_id}: pred_instances.{field} holds a non-finite'):
            _evaluate(CocoMetric(), dataset, samples)


def test_coco_metric_refuses_ground_truth_labels_outside_the_categories(synthetic):
    # without an annotation file the samples' instances are the ground truth: label -1 would be the last category
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir))
    samples = _gt_predictions(ann_file, dataset.cat_ids)[:2]
    for sample, index in zip(samples, range(2)):
        sample.set_metainfo({'instances': dataset[index]['meta']['instances']})
    samples[0].metainfo['instances'][0]['bbox_label'] = -1
    with pytest.raises(ValueError, match='bbox_label -1 is outside the 3 categories'):
        _evaluate(CocoMetric(use_ann_file=False), dataset, samples)


# --- the Detector on Focus-DETR ------------------------------------------------------------------------------

def test_detector_loss_predict_and_tensor_on_focus_detr(synthetic):
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir), pipeline=detection_transforms(False, test_scale=128))
    torch.manual_seed(0)
    model = Detector(_tiny_focus_detr(num_classes=3))
    items = [dataset[0], dataset[1]]
    items[1]['gt_bboxes'], items[1]['gt_labels'] = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)  # no boxes
    model.train()
    data = model.data_preprocessor(det_collate(items), training=True)
    targets = model.targets(data['inputs'], data['data_samples'])
    box = items[0]['gt_bboxes'][0]
    cx, cy = (box[0] + box[2]) / 2 / 128, (box[1] + box[3]) / 2 / 128
    torch.testing.assert_close(targets[0]['boxes'][0, :2], torch.stack([cx, cy]))
    assert targets[1]['boxes'].shape == (0, 4)
    losses = model(**data, mode='loss')
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total) and set(log_vars) == set(losses)
    torch.testing.assert_close(total, sum(v for k, v in losses.items() if k != 'loss'))
    total.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if 'backbone' in n)
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(det_collate([dataset[0], dataset[1]]))
        predictions = model(**data, mode='predict')
        raw = model(data['inputs'], data['data_samples'], mode='tensor', pad_mask=data['pad_mask'])
    assert isinstance(raw, dict) and raw
    for p in predictions:
        pred = p.pred_instances
        assert p.scale_factor == (128 / 96, 128 / 96)
        assert pred.bboxes.shape == (20, 4) and pred.scores.shape == (20,) and pred.labels.dtype == torch.long
        assert pred.bboxes.min() >= 0 and pred.bboxes.max() <= 96  # the original 96-pixel image
        assert ((pred.labels >= 0) & (pred.labels < 3)).all()


def test_detector_rejects_labels_beyond_the_network(synthetic):
    ann_file, img_dir = synthetic
    model = Detector(_tiny_focus_detr(num_classes=2))
    item = CocoDetection(str(ann_file), str(img_dir))[0]
    item['gt_labels'] = torch.full_like(item['gt_labels'], 2)
    data = model.data_preprocessor(det_collate([item]), training=True)
    with pytest.raises(ValueError, match='num_classes'):
        model(**data, mode='loss')


class _FixedBoxes(torch.nn.Module):
    """A stand-in network: every image gets one box far beyond any image, so predict's clipping shows."""

    def loss(self, images, pad_mask, targets):
        return {'loss_zero': images.sum() * 0}

    def predict(self, images, pad_mask, image_sizes):
        return [{'scores': torch.ones(1), 'labels': torch.zeros(1, dtype=torch.long),
                 'boxes': torch.tensor([[-5.0, -5.0, 1000.0, 1000.0]])} for _ in image_sizes]


def _gt_sample(h, w, boxes):
    return BaseDataElement(gt_instances=InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                     labels=torch.zeros(len(boxes), dtype=torch.long)),
                           metainfo={'img_shape': (h, w)})


@pytest.mark.parametrize('box, why', [
    ([40, 40, 10, 10], 'inverted'),  # once a loss of -390735: GIoU is unbounded below for an inverted box
    ([10, 30, 20, 25], 'inverted'),
    ([float('nan'), 10, 40, 40], 'non-finite'),  # once scipy's 'matrix contains invalid numeric entries'
    ([10, 10, float('inf'), 40], 'non-finite'),
    ([-50, -50, -10, -10], 'wholly outside'),
    ([100, 10, 120, 40], 'wholly outside'),  # x1 beyond the 96-pixel width
])
def test_detector_refuses_gt_boxes_no_data_set_means(box, why):
    model = Detector(_FixedBoxes())
    samples = [_gt_sample(64, 64, [[1, 1, 9, 9]]), _gt_sample(64, 96, [[0, 0, 8, 8], box])]
    with pytest.raises(ValueError, match=rf'image 1: gt box 1 = \[.*\] \(x1, y1, x2, y2 pixels\) .*{why}'):
        model.targets(torch.zeros(2, 3, 64, 96), samples)


def test_detector_clips_gt_boxes_partly_outside_the_image():
    # Cut by the frame (as the pipelines clip them): clipped to the 64x96 image, not normalised past [0, 1].
    # Zero-size boxes are kept.
    model = Detector(_FixedBoxes())
    samples = [_gt_sample(64, 96, [[-16, 8, 32, 80], [90, -4, 120, 4], [40, 40, 40, 40], [96, 0, 100, 10]])]
    boxes = model.targets(torch.zeros(1, 3, 64, 96), samples)[0]['boxes']
    expected = torch.tensor([[16 / 96, 36 / 64, 32 / 96, 56 / 64], [93 / 96, 2 / 64, 6 / 96, 4 / 64],
                             [40 / 96, 40 / 64, 0, 0], [1, 5 / 64, 0, 10 / 64]])
    torch.testing.assert_close(boxes, expected)


def test_detector_predict_clips_each_image_to_its_own_size():
    # Without 'ori_shape' every image was clipped to the first image's size.
    model = Detector(_FixedBoxes())
    samples = [BaseDataElement(metainfo={'img_shape': (64, 48)}), BaseDataElement(metainfo={'img_shape': (96, 80)}),
               BaseDataElement(metainfo={'img_shape': (96, 80), 'scale_factor': (2.0, 0.5)})]
    out = model(torch.zeros(3, 3, 96, 80), samples, mode='predict')
    assert out[0].pred_instances.bboxes.tolist() == [[0, 0, 48, 64]]
    assert out[1].pred_instances.bboxes.tolist() == [[0, 0, 80, 96]]
    assert out[2].pred_instances.bboxes.tolist() == [[0, 0, 40, 192]]  # the original image: 80 / 2 by 96 / 0.5


@pytest.mark.parametrize('mode', ['loss', 'predict', 'tensor'])
@pytest.mark.parametrize('count', [1, 3])
def test_detector_needs_one_data_sample_per_image(mode, count):
    # More samples than images once failed with an IndexError in make_pad_mask.
    model = Detector(_FixedBoxes())
    with pytest.raises(ValueError, match=f'{count} data samples for 2 images'):
        model(torch.zeros(2, 3, 32, 32), [_gt_sample(32, 32, [[1, 1, 9, 9]]) for _ in range(count)], mode=mode)


def test_box_images_hook(synthetic, tmp_path):
    ann_file, img_dir = synthetic
    dataset = CocoDetection(str(ann_file), str(img_dir), pipeline=detection_transforms(False, test_scale=64))
    batch = det_collate([dataset[0], dataset[1]])
    outputs = _gt_predictions(ann_file, dataset.cat_ids)[:2]
    for out, sample in zip(outputs, batch['data_samples']):
        out.set_metainfo(dict(sample.metainfo))

    class Runner:
        test_dataloader = type('Loader', (), {'dataset': dataset})()
    hook = DetPredictionImagesHook(str(tmp_path / 'shown'), score_thr=0.6)
    hook.after_test_iter(Runner(), 0, batch, outputs)
    from PIL import Image
    files = sorted((tmp_path / 'shown').glob('*.png'))
    assert [f.name for f in files] == ['00000_img-1.png', '00001_img-2.png']
    assert Image.open(files[0]).size == (96 * 2 + 4, 96)  # prediction and ground truth at the original size


# --- tools -------------------------------------------------------------------------------------------------------

@pytest.mark.tools
def test_train_and_test_tools_on_synthetic_shapes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONPATH=str(ROOT))
    env.pop('PYTEST_XDIST_WORKER', None)
    data = str(tmp_path / 'data')
    small = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
             'default_hooks.logger.interval=1', 'param_scheduler.0.end=1',
             f'train_dataloader.dataset.root={data}', 'train_dataloader.dataset.num_images=8',
             'train_dataloader.batch_size=4']
    for loader in ('val_dataloader', 'test_dataloader'):
        small += [f'{loader}.dataset.root={data}', f'{loader}.dataset.num_images=4', f'{loader}.batch_size=2']
    work = tmp_path / 'run'
    proc = subprocess.run([sys.executable, 'tools/train.py', SMOKE, '--work-dir', str(work), '--cfg-options',
                           *small], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, 'tools/test.py', SMOKE, str(work / 'epoch_1.pth'), '--work-dir',
                           str(tmp_path / 't'), '--show-dir', str(tmp_path / 'shown'), '--cfg-options', *small],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(ln for ln in (proc.stdout + proc.stderr).splitlines() if 'test metrics:' in ln)
    assert "'coco/bbox_mAP': " in line and "'coco/bbox_mAP_50': " in line
    assert 0.0 <= float(line.split("'coco/bbox_mAP': ")[1].split(',')[0]) <= 1.0
    assert len(list((tmp_path / 'shown').glob('0*.png'))) == 4  # one drawing per sample, and their overview
    assert (tmp_path / 'shown' / 'overview.png').is_file()


def test_coco_schedule_gives_the_backbone_a_tenth_of_the_lr():
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(ROOT / 'configs/detection/focus_detr_4scale_r50_8xb2-12e_coco.py')
    assert cfg.train_cfg.max_epochs == 12 and cfg.param_scheduler[0]['milestones'] == [11]
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    model = Detector(_tiny_focus_detr())
    names = {id(p): n for n, p in model.named_parameters()}
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {(names[id(p)].startswith('network.backbone.'), round(group['lr'], 10))
           for group in wrapper.optimizer.param_groups for p in group['params']}
    assert lrs == {(True, 1e-5), (False, 1e-4)}
    assert wrapper.clip_grad_kwargs == {'max_norm': 0.1, 'norm_type': 2}
    for epochs in (24, 36):
        cfg = Config.fromfile(ROOT / f'configs/detection/focus_detr_4scale_r50_8xb2-{epochs}e_coco.py')
        assert cfg.train_cfg.max_epochs == epochs and cfg.param_scheduler[0]['milestones'] == [20]


def test_a_photo_turned_by_its_exif_tag_against_raw_annotations_is_named(tmp_path):
    # COCO width/height written from the raw bitmap of a photo tagged "turn 90 degrees": the image is read upright
    from PIL import Image
    (tmp_path / 'img').mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / 'img' / 'a.jpg', exif=exif.tobytes())
    ann = _write_coco(tmp_path / 'ann.json', [{'id': 1, 'file_name': 'a.jpg', 'width': 50, 'height': 40}],
                      [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [1, 2, 10, 12], 'area': 120, 'iscrowd': 0}],
                      [{'id': 1, 'name': 'one'}])
    with pytest.raises(ValueError, match='40x50 pixels, its annotation says 50x40.*sizes are swapped.*EXIF'):
        CocoDetection(str(ann), str(tmp_path / 'img'))[0]
