"""Object detection data: COCO-format datasets, DETR's augmentation in albumentations, and synthetic COCO shapes.

Each item is ``{'img': uint8 tensor [3, H, W], 'gt_bboxes': float32 [n, 4] (x1, y1, x2, y2 in the transformed
image's pixels), 'gt_labels': int64 [n] (contiguous labels 0..K-1), 'meta': dict}``. ``meta`` holds 'index',
'img_id' (the COCO image id), 'img_path', 'ori_shape' and 'img_shape' ((h, w) before and after the pipeline),
'scale_factor' ((w, h) ratios of the two, which maps test-time boxes back to the original image) and 'instances':
every annotation of the image in original pixels, crowd ones included, as mmdet carries them
(``{'bbox': [x1, y1, x2, y2], 'bbox_label', 'ignore_flag', 'area'}``), so a metric can evaluate without the
annotation file. Crowd boxes never reach the training targets.

The pipeline is an albumentations-style callable ``pipeline(image=hwc_uint8, bboxes=[n, 4] pascal_voc,
labels=[n])``, seeded per sample from (seed, epoch, index) like every visionattn dataset.

The augmentation is the one Focus-DETR trained with (detrex's ``coco_detr`` data config, after DETR and DINO):
random horizontal flip, then with probability 1/2 either a resize of the shorter side to one of (480, 512, ...,
800) with the longer side at most 1333, or a resize of the shorter side to one of (400, 500, 600), a random crop
of 384-600 pixels a side, and the multi-scale resize. Testing resizes the shorter side to 800 (longer <= 1333).
Resizes follow detectron2's ``ResizeShortestEdge`` (scale to the short edge, shrink to the long-edge limit, round
half up); the crop follows its ``RandomCrop('absolute_range')``.
"""
import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop

from visionattn.data.base import SeededDataset, load_image, orientation_hint

__all__ = ['CocoDetection', 'SyntheticCocoDetection', 'make_synthetic_coco', 'detection_transforms',
           'ResizeShortestEdge', 'AbsoluteRangeCrop', 'DETR_TRAIN_SCALES', 'SYNTHETIC_SHAPE_KINDS']

DETR_TRAIN_SCALES = tuple(range(480, 801, 32))  # (480, 512, ..., 800)
SYNTHETIC_SHAPE_KINDS = ('rectangle', 'ellipse', 'triangle', 'diamond')


def shortest_edge_size(height: int, width: int, short: int, max_size: Optional[int]) -> Tuple[int, int]:
    """(h, w) with the shorter side ``short`` and the longer at most ``max_size``, aspect kept (detectron2's
    ``ResizeShortestEdge.get_output_shape``: rounded half up)."""
    scale = short / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max_size is not None and max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


class ResizeShortestEdge(A.DualTransform):
    """Resize keeping the aspect ratio so that the shorter side is one of ``sizes`` (drawn uniformly) and the
    longer side at most ``max_size``. Bilinear for images, nearest for masks; boxes scale with the image.

    Args:
        sizes: Shorter-side lengths to choose from (one int for a fixed size).
        max_size: Upper bound of the longer side; None for no bound.
        p: Probability of applying the transform.
    """

    def __init__(self, sizes: Union[int, Sequence[int]] = 800, max_size: Optional[int] = 1333, p: float = 1.0):
        super().__init__(p=p)
        sizes = (sizes,) if isinstance(sizes, int) else tuple(int(s) for s in sizes)
        if not sizes or min(sizes) < 1:
            raise ValueError(f'sizes must be positive shorter-side lengths, got {sizes}')
        if max_size is not None and max_size < 1:
            raise ValueError(f'max_size must be positive or None, got {max_size}')
        self.sizes, self.max_size = sizes, max_size

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params['shape'][:2]
        short = self.sizes[0] if len(self.sizes) == 1 else self.py_random.choice(self.sizes)
        return {'size': shortest_edge_size(height, width, short, self.max_size)}

    def apply(self, img: np.ndarray, size: Tuple[int, int], **params) -> np.ndarray:
        if img.shape[:2] == tuple(size):
            return img
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: Tuple[int, int], **params) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params) -> np.ndarray:
        return bboxes  # albumentations keeps boxes normalised to the image size: a resize leaves them unchanged

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('sizes', 'max_size')


class AbsoluteRangeCrop(BaseCrop):
    """A random crop whose height and width are each drawn uniformly from ``crop_size`` = (low, high) pixels,
    capped by the image, at a uniform position (detectron2's ``RandomCrop('absolute_range', crop_size)``, DETR's
    ``RandomSizeCrop``). Boxes are cut to the crop; the Compose's BboxParams drop the ones left empty.

    Args:
        crop_size: (low, high) side lengths in pixels.
        p: Probability of applying the transform.
    """

    def __init__(self, crop_size: Sequence[int] = (384, 600), p: float = 1.0):
        super().__init__(p=p)
        if len(crop_size) != 2 or not 1 <= crop_size[0] <= crop_size[1]:
            raise ValueError(f'crop_size must be (low, high) with 1 <= low <= high, got {crop_size}')
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))

    def get_params_dependent_on_data(self, params: Dict[str, Any], data: Dict[str, Any]) -> Dict[str, Any]:
        height, width = params['shape'][:2]
        low, high = self.crop_size
        crop_h = self.py_random.randint(min(height, low), min(height, high))
        crop_w = self.py_random.randint(min(width, low), min(width, high))
        top = self.py_random.randint(0, height - crop_h)
        left = self.py_random.randint(0, width - crop_w)
        return {'crop_coords': (left, top, left + crop_w, top + crop_h)}

    def get_transform_init_args_names(self) -> Tuple[str, ...]:
        return ('crop_size',)


def detection_transforms(train: bool, scales: Sequence[int] = DETR_TRAIN_SCALES, max_size: Optional[int] = 1333,
                         crop_scales: Sequence[int] = (400, 500, 600), crop_size: Sequence[int] = (384, 600),
                         test_scale: int = 800, hflip: float = 0.5, min_area: float = 0.0,
                         min_visibility: float = 0.0) -> A.Compose:
    """DETR's detection pipelines in albumentations; call as ``pipeline(image=hwc_uint8, bboxes=[n, 4] x1y1x2y2
    pixels, labels=[n])``.

    Args:
        train: The random training pipeline, or the deterministic test resize.
        scales: Shorter-side lengths of the multi-scale resize (training).
        max_size: Longer-side bound of every resize (test included).
        crop_scales: Shorter-side lengths of the resize before the crop (training).
        crop_size: (low, high) sides of the random crop, in pixels (training).
        test_scale: Shorter side at test time.
        hflip: Horizontal flip probability (training).
        min_area: Boxes left with fewer pixels after a crop are dropped.
        min_visibility: Boxes keeping less than this fraction of their area after a crop are dropped (0: only
            boxes cut to nothing go, as detectron2 and DETR do).
    """
    bbox_params = A.BboxParams(format='pascal_voc', label_fields=['labels'], min_area=min_area,
                               min_visibility=min_visibility, clip=True)
    if not train:
        return A.Compose([ResizeShortestEdge(test_scale, max_size)], bbox_params=bbox_params)
    ops = [A.HorizontalFlip(p=hflip)] if hflip > 0 else []
    ops.append(A.OneOf([
        A.Sequential([ResizeShortestEdge(scales, max_size)], p=1.0),
        A.Sequential([ResizeShortestEdge(crop_scales, None), AbsoluteRangeCrop(crop_size),
                      ResizeShortestEdge(scales, max_size)], p=1.0),
    ], p=1.0))
    return A.Compose(ops, bbox_params=bbox_params)


def _read_image(path: Path, img_id: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f'image {path} (COCO image id {img_id}) does not exist')
    return load_image(path)


def _load_coco(ann_file: Path):
    from pycocotools.coco import COCO
    if not ann_file.is_file():
        raise FileNotFoundError(f'COCO annotation file {str(ann_file)!r} does not exist')
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco = COCO(str(ann_file))
    except json.JSONDecodeError as error:
        raise ValueError(f'{ann_file} is not a valid JSON file: {error}') from error
    for key in ('images', 'categories'):
        if key not in coco.dataset:
            raise ValueError(f'{ann_file} is not a COCO detection file: it has no {key!r} list')
    return coco


class CocoDetection(SeededDataset):
    """A COCO-format detection set: an annotation JSON and a folder of images.

    Category ids are mapped to contiguous labels in increasing id order (``cat_ids[label]`` maps back, as
    mmdet's ``cat2label``). Annotations with ``iscrowd=1`` are left out of the training targets (kept in
    ``meta['instances']`` with ``ignore_flag=1`` for evaluation); boxes smaller than a pixel a side, with no area
    or outside the image are skipped, and the rest are clipped to the image (mmdet's ``parse_data_info``).

    Args:
        ann_file: The COCO JSON, relative to ``data_root`` when that is given.
        img_dir: The image folder (``file_name`` entries are relative to it), relative to ``data_root``.
        data_root: The dataset's root folder.
        pipeline: An albumentations-style callable or a config dict ``{'type': factory, **kwargs}``.
        seed: Seed of the augmentation draws.
        filter_empty_gt: Drop images without any non-crowd box (detectron2's ``filter_empty``; for training).
        min_size: Drop images whose shorter side is below this (mmdet's ``filter_cfg.min_size``).
        max_samples: Keep only the first this many images (after filtering).
        classes: Keep only the categories of these names (in this order of labels); default all.
    """

    def __init__(self, ann_file: str, img_dir: str, data_root: Optional[str] = None,
                 pipeline: Union[None, Callable, Mapping] = None, seed: int = 0, filter_empty_gt: bool = False,
                 min_size: int = 0, max_samples: Optional[int] = None, classes: Optional[Sequence[str]] = None):
        super().__init__(pipeline, seed)
        root = Path(data_root).expanduser() if data_root is not None else None
        ann_path, img_path = Path(ann_file).expanduser(), Path(img_dir).expanduser()
        if root is not None:
            if not root.is_dir():
                raise FileNotFoundError(f'{type(self).__name__}: data_root={str(root)!r} is not a folder')
            ann_path, img_path = root / ann_path, root / img_path
        if not img_path.is_dir():
            raise FileNotFoundError(f'{type(self).__name__}: image folder {str(img_path)!r} does not exist')
        self.ann_file, self.img_dir = str(ann_path), img_path
        coco = _load_coco(ann_path)
        categories = sorted(coco.dataset['categories'], key=lambda c: c['id'])
        if classes is not None:
            classes = list(classes) if not isinstance(classes, str) else [classes]
            repeated = sorted({n for n in classes if classes.count(n) > 1})
            if not classes or repeated:  # none: every box dropped; a repeat: its first label never used
                raise ValueError(f'{type(self).__name__}: classes must name distinct categories, got {classes}'
                                 + (f' ({repeated} repeated)' if repeated else ''))
            by_name = {c['name']: c for c in categories}
            unknown = [n for n in classes if n not in by_name]
            if unknown:
                raise ValueError(f'{ann_path}: no categories named {unknown}; it has {sorted(by_name)}')
            categories = [by_name[n] for n in classes]
        self.cat_ids: Tuple[int, ...] = tuple(int(c['id']) for c in categories)
        self.cat2label: Dict[int, int] = {cat: label for label, cat in enumerate(self.cat_ids)}
        self.classes = tuple(str(c['name']) for c in categories)
        self.records: List[Dict] = []
        for img_id in sorted(coco.imgs):
            info = coco.imgs[img_id]
            record = self._parse(info, coco.imgToAnns.get(img_id, []))
            if filter_empty_gt and not (record['ignore'] == 0).any():
                continue
            if min(record['height'], record['width']) < min_size:
                continue
            self.records.append(record)
        self.records = self.records[:max_samples]
        if not self.records:
            raise ValueError(f'{type(self).__name__}: no images left in {ann_path} (filter_empty_gt='
                             f'{filter_empty_gt}, min_size={min_size}, max_samples={max_samples})')

    def _parse(self, info: Dict, anns: Sequence[Dict]) -> Dict:
        width, height = int(info['width']), int(info['height'])
        boxes, labels, ignore, areas = [], [], [], []
        for ann in anns:
            if ann.get('ignore', False) or ann['category_id'] not in self.cat2label:
                continue
            x, y, w, h = (float(v) for v in ann['bbox'])
            inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
            inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
            if inter_w * inter_h == 0 or ann.get('area', w * h) <= 0 or w < 1 or h < 1:
                continue
            boxes.append([max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)])
            labels.append(self.cat2label[ann['category_id']])
            ignore.append(int(bool(ann.get('iscrowd', 0))))
            areas.append(float(ann.get('area', w * h)))
        return {'img_id': int(info['id']), 'file_name': info['file_name'], 'height': height, 'width': width,
                'boxes': np.asarray(boxes, np.float32).reshape(-1, 4), 'labels': np.asarray(labels, np.int64),
                'ignore': np.asarray(ignore, np.int64), 'areas': np.asarray(areas, np.float32)}

    @property
    def metainfo(self) -> Dict:
        return {'classes': self.classes, 'cat_ids': self.cat_ids, 'ann_file': self.ann_file}

    def label_to_cat_id(self, labels: Sequence[int]) -> List[int]:
        """COCO category ids of contiguous labels."""
        return [self.cat_ids[int(label)] for label in labels]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} images')
        record = self.records[index]
        path = self.img_dir / record['file_name']
        image = _read_image(path, record['img_id'])
        ori_shape = (int(image.shape[0]), int(image.shape[1]))
        if ori_shape != (record['height'], record['width']):
            raise ValueError(f'{path} is {ori_shape[1]}x{ori_shape[0]} pixels, its annotation says '
                             f'{record["width"]}x{record["height"]} (COCO image id {record["img_id"]})'
                             f'{orientation_hint(ori_shape, (record["height"], record["width"]))}')
        keep = record['ignore'] == 0
        boxes, labels = record['boxes'][keep], record['labels'][keep]
        if self.pipeline is not None:
            self.seed_pipeline(index)
            out = self.pipeline(image=image, bboxes=boxes, labels=labels)
            image = out['image']
            boxes = np.asarray(out['bboxes'], np.float32).reshape(-1, 4)
            labels = np.asarray(out['labels'], np.int64).reshape(-1)
        img_shape = (int(image.shape[0]), int(image.shape[1]))
        instances = [{'bbox': [float(v) for v in box], 'bbox_label': int(label), 'ignore_flag': int(flag),
                      'area': float(area)}
                     for box, label, flag, area in zip(record['boxes'], record['labels'], record['ignore'],
                                                       record['areas'])]
        meta = {'index': index, 'img_id': record['img_id'], 'img_path': str(path), 'ori_shape': ori_shape,
                'img_shape': img_shape, 'scale_factor': (img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0]),
                'instances': instances}
        return {'img': torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1),
                'gt_bboxes': torch.from_numpy(np.ascontiguousarray(boxes)),
                'gt_labels': torch.from_numpy(np.ascontiguousarray(labels)), 'meta': meta}


# --- synthetic COCO shapes -------------------------------------------------------------------------------------

def _textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour noise, plus stripes or a checkerboard of low contrast half of the time."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
    image = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    kind = int(rng.integers(0, 3))
    period = float(rng.uniform(6, 20))
    if kind == 1:
        angle = rng.uniform(0, np.pi)
        image += 18 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)[..., None]
    elif kind == 2:
        image += 18 * (((xx // period) + (yy // period)) % 2 * 2 - 1)[..., None]
    return image + rng.normal(0, 8, size=(size, size, 3))


def _shape_mask(kind: str, rng: np.random.Generator, size: int, cx: float, cy: float, half_w: float,
                half_h: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    if kind == 'rectangle':
        cv2.rectangle(mask, (int(round(cx - half_w)), int(round(cy - half_h))),
                      (int(round(cx + half_w)) - 1, int(round(cy + half_h)) - 1), 1, thickness=-1)
    elif kind == 'ellipse':
        cv2.ellipse(mask, (int(round(cx)), int(round(cy))), (max(1, int(half_w)), max(1, int(half_h))), 0, 0, 360,
                    1, thickness=-1)
    else:
        if kind == 'triangle':
            points = [(cx, cy - half_h), (cx + half_w, cy + half_h), (cx - half_w, cy + half_h)]
            if rng.random() < 0.5:  # pointing down
                points = [(x, 2 * cy - y) for x, y in points]
        else:  # diamond
            points = [(cx, cy - half_h), (cx + half_w, cy), (cx, cy + half_h), (cx - half_w, cy)]
        cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


def _box_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over the smaller box's area: high when boxes overlap much or one holds the other."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return inter_w * inter_h / smaller if smaller > 0 else 0.0


def synthetic_cat_id(label: int) -> int:
    """The synthetic set's category ids are odd (1, 3, 5, ...), so code that confuses ids and labels fails."""
    return 2 * label + 1


def make_synthetic_coco(root: Union[str, Path], num_images: int = 64, size: int = 128, num_classes: int = 3,
                        seed: int = 0) -> Path:
    """Write a COCO-format shapes dataset: ``<root>/images/<id>.png`` and ``<root>/annotations.json``.

    Each image holds 1-5 filled shapes (``SYNTHETIC_SHAPE_KINDS[:num_classes]``: rectangles, ellipses, triangles,
    diamonds) of random colour, sides of 10-50% of the image, placed with little overlap on a textured background;
    a shape's colour is its background's shifted by half the range, so it stands out while colour says nothing of
    the class. Boxes are the tight boxes of the drawn pixels and ``area`` their pixel count (iscrowd 0). Category
    ids are ``2 * label + 1``. The result depends only on the arguments.

    Returns:
        The annotation file's path.
    """
    if not 1 <= num_classes <= len(SYNTHETIC_SHAPE_KINDS):
        raise ValueError(f'num_classes must be 1..{len(SYNTHETIC_SHAPE_KINDS)}, got {num_classes}')
    if size < 32:
        raise ValueError(f'size must be at least 32 pixels, got {size}')
    if num_images < 1:
        raise ValueError(f'num_images must be positive, got {num_images}')
    from PIL import Image
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        image = _textured_background(rng, size)
        placed: List[Tuple[int, List[float], np.ndarray]] = []
        for _ in range(int(rng.integers(1, 6))):
            for _attempt in range(20):
                side = rng.uniform(0.1, 0.5) * size
                half_w, half_h = side / 2, side / 2 * rng.uniform(0.6, 1.0)
                if rng.random() < 0.5:
                    half_w, half_h = half_h, half_w
                cx, cy = rng.uniform(half_w, size - half_w), rng.uniform(half_h, size - half_h)
                box = [cx - half_w, cy - half_h, cx + half_w, cy + half_h]
                if all(_box_overlap(box, other) < 0.2 for _, other, _ in placed):
                    break
            else:
                continue
            label = int(rng.integers(0, num_classes))
            mask = _shape_mask(SYNTHETIC_SHAPE_KINDS[label], rng, size, cx, cy, half_w, half_h)
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            centre = np.clip(image[int(ys.mean()), int(xs.mean())], 0, 255)
            colour = (centre + 128 + rng.uniform(-25, 25, size=3)) % 256
            image[mask] = colour + rng.normal(0, 6, size=(int(mask.sum()), 3))
            placed.append((label, box, mask))
        img_id = index + 1
        file_name = f'{img_id:06d}.png'
        Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8)).save(root / 'images' / file_name)
        images.append({'id': img_id, 'file_name': file_name, 'width': size, 'height': size})
        for position, (label, _, mask) in enumerate(placed):
            visible = mask.copy()
            for _, _, later in placed[position + 1:]:
                visible &= ~later
            if visible.sum() < 4:
                continue
            ys, xs = np.nonzero(visible)
            x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append({'id': len(annotations) + 1, 'image_id': img_id,
                                'category_id': synthetic_cat_id(label), 'bbox': [x1, y1, x2 - x1, y2 - y1],
                                'area': int(visible.sum()), 'iscrowd': 0})
    categories = [{'id': synthetic_cat_id(k), 'name': name, 'supercategory': 'shape'}
                  for k, name in enumerate(SYNTHETIC_SHAPE_KINDS[:num_classes])]
    info = {'description': 'visionattn synthetic COCO shapes', 'num_images': num_images, 'size': size,
            'num_classes': num_classes, 'seed': seed}
    ann_file = root / 'annotations.json'
    ann_file.write_text(json.dumps({'info': info, 'images': images, 'annotations': annotations,
                                    'categories': categories, 'licenses': []}))
    return ann_file


class SyntheticCocoDetection(CocoDetection):
    """:func:`make_synthetic_coco` shapes read through :class:`CocoDetection`, generated on first use.

    The set lives in ``<root>/<split>_<num_images>x<img_size>px_<num_classes>cls_seed<seed>/``; it is written
    when absent (to a temporary folder renamed into place, so parallel processes never read half a set) and
    reused afterwards.

    Args:
        root: Folder to keep generated sets in.
        split: A name for the set ('train', 'val', ...), part of its folder name.
        num_images: Images in the set.
        img_size: Side of the square images.
        num_classes: Shape kinds (1-4).
        seed: Seed of the drawing (pass different seeds to the training and validation sets) and of the
            augmentation draws.
        pipeline: An albumentations-style callable or config dict.
        filter_empty_gt: Drop images without boxes.
        max_samples: Keep only the first this many images.
    """

    def __init__(self, root: str = 'data/synthetic_coco_shapes', split: str = 'train', num_images: int = 256,
                 img_size: int = 128, num_classes: int = 3, seed: int = 0,
                 pipeline: Union[None, Callable, Mapping] = None, filter_empty_gt: bool = False,
                 max_samples: Optional[int] = None):
        folder = Path(root).expanduser() / f'{split}_{num_images}x{img_size}px_{num_classes}cls_seed{seed}'
        if not (folder / 'annotations.json').is_file():
            tmp = folder.with_name(f'{folder.name}.tmp-{os.getpid()}')
            shutil.rmtree(tmp, ignore_errors=True)
            make_synthetic_coco(tmp, num_images, img_size, num_classes, seed)
            try:
                os.rename(tmp, folder)
            except OSError:  # another process put it there first
                shutil.rmtree(tmp, ignore_errors=True)
                if not (folder / 'annotations.json').is_file():
                    raise
        super().__init__(str(folder / 'annotations.json'), str(folder / 'images'), pipeline=pipeline, seed=seed,
                         filter_empty_gt=filter_empty_gt, max_samples=max_samples)
