"""Semantic segmentation datasets: image/mask folders, ADE20K's layout, and synthetic shapes for tests and smoke runs.

Each item is ``{'img': uint8 tensor [3, H, W], 'gt_seg': int64 tensor [H, W] (255 = ignore), 'meta': dict}`` with
``meta`` holding 'index', 'ori_shape' and, for files, 'img_path' and 'seg_map_path'. The pipeline is an
albumentations-style callable ``pipeline(image=hwc_uint8, mask=hw_uint8)``, seeded per sample from
(seed, epoch, index) so that runs are reproducible whatever the number of workers or processes.

Iteration-based schedules draw from an infinite sampler and never change the epoch, so ``repeat_times`` lists each
image that many times under distinct indices (as mmseg's RepeatDataset): each pass over an image draws its own
augmentation, still a pure function of the index.
"""
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from visionattn.data.base import IMAGE_EXTENSIONS, SeededDataset, load_image, orientation_hint

__all__ = ['SegFolderDataset', 'ADE20KDataset', 'SyntheticShapesDataset', 'ADE20K_CLASSES', 'SHAPE_KINDS',
           'IGNORE_INDEX']

IGNORE_INDEX = 255

# The 150 classes of the ADE20K SceneParsing benchmark (ADEChallengeData2016), label 1..150 in the PNGs.
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path',
    'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge', 'bookcase',
    'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove', 'palm',
    'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus', 'towel', 'light',
    'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver', 'airplane',
    'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet', 'poster',
    'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything', 'swimming pool', 'stool',
    'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank',
    'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture',
    'hood', 'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor',
    'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag',
)


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """Label 0 ("other") becomes ignore (255) and the rest shift down by one (mmseg's ``reduce_zero_label``)."""
    mask = mask.astype(np.int32)
    out = mask - 1
    out[(mask == 0) | (mask == IGNORE_INDEX)] = IGNORE_INDEX
    return out.astype(np.uint8)


class _SegmentationDataset(SeededDataset):
    classes: Sequence[str] = ()

    def __init__(self, pipeline: Union[None, Callable, Mapping] = None, seed: int = 0,
                 gt_original_size: bool = False, repeat_times: int = 1):
        if repeat_times < 1:
            raise ValueError(f'repeat_times must be positive, got {repeat_times}')
        super().__init__(pipeline, seed)
        self.gt_original_size = gt_original_size
        self.repeat_times = repeat_times

    def _num_images(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, Dict]:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._num_images() * self.repeat_times

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} items')
        image_index = index % self._num_images()
        image, mask, meta = self._load(image_index)
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f'item {image_index}: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size '
                             f'({meta.get("img_path", "")}){orientation_hint(image.shape, mask.shape)}')
        meta = {'index': image_index, 'ori_shape': tuple(int(s) for s in mask.shape[:2]), **meta}
        if self.pipeline is not None:
            self.seed_pipeline(index)
            if self.gt_original_size:  # evaluation at the annotation's own resolution, as mmseg's ADE20K test
                image = self.pipeline(image=image)['image']
            else:
                out = self.pipeline(image=image, mask=mask)
                image, mask = out['image'], out['mask']
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return {'img': img, 'gt_seg': torch.from_numpy(np.ascontiguousarray(mask)).long(), 'meta': meta}


def _read_image(path: Path) -> np.ndarray:
    return load_image(path)  # a writable copy; the file named when it cannot be read


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as mask:
        if mask.mode not in ('L', 'P', 'I;16', 'I'):
            raise ValueError(f'{path}: a label map must be a single-channel PNG (mode L or P), got mode {mask.mode}')
        array = np.asarray(mask)
    if array.max(initial=0) > 255:
        raise ValueError(f'{path}: labels above 255 do not fit the uint8 masks')
    return array.astype(np.uint8)


class SegFolderDataset(_SegmentationDataset):
    """Images in ``img_dir`` with label maps of the same stem in ``ann_dir`` (single-channel PNGs).

    Args:
        img_dir: Folder of images (searched recursively).
        ann_dir: Folder of label maps mirroring ``img_dir``'s sub-folders.
        classes: Class names in label order (their count is the number of classes).
        img_suffix: Image file suffix.
        seg_map_suffix: Label map suffix.
        reduce_zero_label: Label 0 becomes ignore (255) and the others shift down by one.
        pipeline: An albumentations-style callable or a config dict ``{'type': factory, **kwargs}``.
        seed: Seed of the augmentation draws.
        gt_original_size: Transform the image only and keep the mask at its file's resolution (for evaluation:
            predictions are resized to it).
        max_samples: Keep only the first this many pairs.
        repeat_times: List every pair this many times (each with its own augmentation draws).
    """

    def __init__(self, img_dir: str, ann_dir: str, classes: Sequence[str], img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png', reduce_zero_label: bool = False,
                 pipeline: Union[None, Callable, Mapping] = None, seed: int = 0, gt_original_size: bool = False,
                 max_samples: Optional[int] = None, repeat_times: int = 1):
        super().__init__(pipeline, seed, gt_original_size, repeat_times)
        self.classes = tuple(classes)
        if not self.classes:
            raise ValueError('SegFolderDataset needs the class names')
        img_root, ann_root = Path(img_dir).expanduser(), Path(ann_dir).expanduser()
        for name, folder in (('img_dir', img_root), ('ann_dir', ann_root)):
            if not folder.is_dir():
                raise FileNotFoundError(f'SegFolderDataset: {name}={str(folder)!r} is not a folder')
        images = sorted(p for p in img_root.rglob(f'*{img_suffix}') if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise FileNotFoundError(f'SegFolderDataset: no *{img_suffix} images under {img_root}')
        self.samples: List[Tuple[Path, Path]] = []
        missing = []
        for image in images:
            ann = ann_root / image.relative_to(img_root).with_suffix(seg_map_suffix)
            if ann.is_file():
                self.samples.append((image, ann))
            else:
                missing.append(str(ann))
        if missing:
            raise FileNotFoundError(f'SegFolderDataset: {len(missing)} images have no label map, e.g. {missing[:3]}')
        self.samples = self.samples[:max_samples]
        self.reduce_zero_label = reduce_zero_label

    def _num_images(self) -> int:
        return len(self.samples)

    def _load(self, index):
        img_path, ann_path = self.samples[index]
        mask = _read_mask(ann_path)
        if self.reduce_zero_label:
            mask = reduce_zero_label(mask)
        return _read_image(img_path), mask, {'img_path': str(img_path), 'seg_map_path': str(ann_path)}


class ADE20KDataset(SegFolderDataset):
    """ADE20K SceneParsing (ADEChallengeData2016): ``<data_root>/images/<split>/*.jpg`` and
    ``<data_root>/annotations/<split>/*.png`` with labels 1..150 and 0 = "other", which is ignored (255) while the
    classes shift to 0..149, as mmseg's ``reduce_zero_label=True``.

    Args:
        data_root: The ADEChallengeData2016 folder.
        split: 'training' or 'validation'.
        pipeline: An albumentations-style callable or config dict.
        seed: Seed of the augmentation draws.
        gt_original_size: Keep the mask at its file's resolution (mmseg evaluates there).
        max_samples: Keep only the first this many images.
        repeat_times: List every image this many times (for iteration-based schedules).
    """

    def __init__(self, data_root: str, split: str = 'training', pipeline: Union[None, Callable, Mapping] = None,
                 seed: int = 0, gt_original_size: bool = False, max_samples: Optional[int] = None,
                 repeat_times: int = 1):
        if split not in ('training', 'validation'):
            raise ValueError(f"ADE20KDataset split must be 'training' or 'validation', got {split!r}")
        root = Path(data_root).expanduser()
        super().__init__(root / 'images' / split, root / 'annotations' / split, ADE20K_CLASSES, '.jpg', '.png',
                         reduce_zero_label=True, pipeline=pipeline, seed=seed, gt_original_size=gt_original_size,
                         max_samples=max_samples, repeat_times=repeat_times)


SHAPE_KINDS = ('disk', 'rectangle', 'triangle', 'ring')


class SyntheticShapesDataset(_SegmentationDataset):
    """Random filled shapes on smooth RGB noise; each class is a shape kind, whatever its colour.

    Class 0 is the background, classes 1.. are ``SHAPE_KINDS[:num_classes - 1]`` (disk, rotated rectangle,
    triangle, ring). Each image holds 2-4 shapes of random kind, size, position and colour (later ones occlude
    earlier ones) over low-frequency colour noise plus pixel noise; a shape's colour is the background colour at
    its centre shifted by half the range (+-20) per channel, so it always stands out while colour says nothing of
    the class. Item ``i`` depends only on (seed, i).

    Args:
        num_samples: Dataset length.
        img_size: Side of the square images.
        num_classes: 2..5 (background + up to four shape kinds).
        seed: Seed of the drawing (and of the augmentation draws).
        pipeline: An albumentations-style callable or config dict.
        repeat_times: List every image this many times (each with its own augmentation draws).
    """

    def __init__(self, num_samples: int = 256, img_size: int = 64, num_classes: int = 4, seed: int = 0,
                 pipeline: Union[None, Callable, Mapping] = None, repeat_times: int = 1):
        super().__init__(pipeline, seed, repeat_times=repeat_times)
        if not 2 <= num_classes <= len(SHAPE_KINDS) + 1:
            raise ValueError(f'num_classes must be 2..{len(SHAPE_KINDS) + 1} (background + shape kinds), '
                             f'got {num_classes}')
        if img_size < 16:
            raise ValueError(f'img_size must be at least 16 to draw shapes, got {img_size}')
        if num_samples < 1:
            raise ValueError(f'num_samples must be positive, got {num_samples}')
        self.num_samples, self.img_size, self.num_classes = num_samples, img_size, num_classes
        self.classes = ('background', *SHAPE_KINDS[:num_classes - 1])

    def _num_images(self) -> int:
        return self.num_samples

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        import cv2
        size = self.img_size
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        return smooth + rng.normal(0, 12, size=(size, size, 3))

    def _shape_mask(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        import cv2
        size = self.img_size
        mask = np.zeros((size, size), np.uint8)
        radius = rng.uniform(0.12, 0.25) * size
        cx, cy = rng.uniform(radius, size - radius, size=2)
        if kind in ('disk', 'ring'):
            yy, xx = np.mgrid[:size, :size]
            dist2 = (xx - cx) ** 2 + (yy - cy) ** 2
            inside = dist2 <= radius ** 2
            if kind == 'ring':
                inside &= dist2 >= (0.55 * radius) ** 2
            mask[inside] = 1
            return mask
        angle = rng.uniform(0, 2 * np.pi)
        if kind == 'rectangle':
            aspect = rng.uniform(0.5, 1.0)
            corners = [(np.cos(a), np.sin(a)) for a in (np.pi / 4, 3 * np.pi / 4, 5 * np.pi / 4, 7 * np.pi / 4)]
            points = [(x * radius, y * radius * aspect) for x, y in corners]
        else:  # an equilateral-ish triangle
            points = [(radius * np.cos(a), radius * np.sin(a)) for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        poly = (np.array(points) @ rot.T + (cx, cy)).round().astype(np.int32)
        cv2.fillPoly(mask, [poly], 1)
        return mask

    def _load(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(f'index {index} out of range for {self.num_samples} samples')
        rng = np.random.default_rng([self.seed, index])
        image = self._background(rng)
        label = np.zeros((self.img_size, self.img_size), np.uint8)
        for _ in range(int(rng.integers(2, 5))):
            cls = int(rng.integers(1, self.num_classes))
            mask = self._shape_mask(SHAPE_KINDS[cls - 1], rng).astype(bool)
            ys, xs = np.nonzero(mask)
            if len(ys) == 0:
                continue
            centre = image[int(ys.mean()), int(xs.mean())]
            colour = (np.clip(centre, 0, 255) + 128 + rng.uniform(-20, 20, size=3)) % 256
            image[mask] = colour + rng.normal(0, 12, size=(int(mask.sum()), 3))
            label[mask] = cls
        return np.clip(image, 0, 255).round().astype(np.uint8), label, {}
