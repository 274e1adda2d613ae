"""Medical slice datasets: Synapse and AVT in the official ParaTransCNN/TransUNet layout, CT windowing, the official
augmentations through albumentations, and a synthetic generator of organ- and vessel-like volumes.

Each item is ``{'img': uint8 tensor [1, H, W], 'gt_seg': int64 tensor [H, W], 'meta': dict}``; ``meta`` holds
'index', 'case_name', 'slice_index', 'num_slices' and 'ori_shape', so a per-volume metric can rebuild each volume
from its slices. Test volumes are served slice by slice, as the official test loops over them.

Layouts (official: https://github.com/HongkunSun/ParaTransCNN/blob/main/datasets/README.md):
- Synapse: ``<data_root>/train_npz/<case>_slice<k>.npz`` ('image' in [0, 1] after clipping HU to [-125, 275],
  'label' 0..8) and ``<data_root>/test_vol_h5/<case>.npy.h5`` ('image', 'label' volumes [D, H, W]); the lists
  ``<list_dir>/train.txt`` and ``test_vol.txt`` name the slices and volumes.
- AVT: the same with ``train``/``test_vol`` folders, ``<case>.h5`` volumes (clip [-190, 1668] HU, 1 mm in plane,
  labels 0/1) that also hold 'origin', 'direction' and 'xyz_thickness'.
"""
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from visionattn.data.base import SeededDataset

__all__ = ['SynapseDataset', 'AVTDataset', 'SyntheticSlicesDataset', 'ct_window', 'unit_to_uint8',
           'medical_transforms', 'SYNAPSE_CLASSES', 'AVT_CLASSES']

SYNAPSE_CLASSES = ('background', 'aorta', 'gallbladder', 'kidney_left', 'kidney_right', 'liver', 'pancreas', 'spleen',
                   'stomach')
AVT_CLASSES = ('background', 'aorta')
SYNAPSE_HU_WINDOW = (-125.0, 275.0)
AVT_HU_WINDOW = (-190.0, 1668.0)


def ct_window(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip CT intensities (HU) to ``[low, high]`` and scale them to [0, 1] (float32), as the official preprocessing.

    Args:
        volume: Any array of Hounsfield units.
        low: Lower bound of the window.
        high: Upper bound of the window (greater than ``low``).
    """
    if not high > low:
        raise ValueError(f'CT window needs high > low, got [{low}, {high}]')
    volume = np.clip(np.asarray(volume, dtype=np.float32), low, high)
    return (volume - np.float32(low)) / np.float32(high - low)


def unit_to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 0..255 (rounded; values outside [0, 1] are clipped)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


class _ImageOnly:
    """Runs an albumentations pipeline on the image only and passes the mask through at its own size: the official
    test feeds resized slices to the network but scores the prediction at the label's original size."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def set_random_seed(self, seed: int) -> None:
        if hasattr(self.transform, 'set_random_seed'):
            self.transform.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Dict[str, np.ndarray]:
        return {'image': self.transform(image=image)['image'], 'mask': mask}


def medical_transforms(train: bool, img_size: Union[int, Sequence[int]] = 224, keep_mask_size: bool = False,
                       rotate_limit: float = 20.0) -> Callable:
    """The official slice pipelines through albumentations (image and mask together).

    Training, as the official ``RandomGenerator``: with probability 1/2 a random rot90 followed by a horizontal or
    vertical flip; otherwise, with probability 1/2, a rotation by up to ``rotate_limit`` degrees (nearest
    interpolation for image and label, zero fill, as the official ``ndimage.rotate(order=0)``); then a resize to
    ``img_size`` (bicubic image, nearest label; the official code uses scipy's cubic spline ``zoom``). Evaluation:
    only the resize.

    Args:
        train: Training (random) or evaluation pipeline.
        img_size: Output size, an int or (height, width).
        keep_mask_size: Resize the image only and return the mask at its original size (the official test).
        rotate_limit: Largest rotation in degrees.
    """
    import albumentations as A
    import cv2
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    resize = A.Resize(height, width, interpolation=cv2.INTER_CUBIC, mask_interpolation=cv2.INTER_NEAREST)
    if not train:
        pipeline = A.Compose([resize])
        return _ImageOnly(pipeline) if keep_mask_size else pipeline
    if keep_mask_size:
        raise ValueError('keep_mask_size is for evaluation pipelines: training needs image and mask aligned')
    rot_flip = A.Compose([A.RandomRotate90(p=1.0), A.OneOf([A.HorizontalFlip(p=1.0), A.VerticalFlip(p=1.0)], p=1.0)],
                         p=0.5)
    rotate = A.Rotate(limit=(-rotate_limit, rotate_limit), interpolation=cv2.INTER_NEAREST,
                      mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                      p=0.25)
    # OneOf normalises its children's p into weights: 1/2 rot90+flip, 1/4 rotation, 1/4 nothing, as officially.
    return A.Compose([A.OneOf([rot_flip, rotate, A.NoOp(p=0.25)], p=1.0), resize])


class _SliceDataset(SeededDataset):
    """Shared item logic: pipeline seeded per (seed, epoch, index), uint8 image, int64 label, per-volume meta."""

    def _load(self, index: int) -> Tuple[np.ndarray, np.ndarray, Dict]:
        """(uint8 image [H, W], integer label [H, W], meta) of one slice."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} slices')
        image, label, meta = self._load(index)
        if label.size and label.min() < 0:  # the uint8 cast below would make -1 the ignored 255, silently
            raise ValueError(f"{meta.get('case_name')} slice {meta.get('slice_index')}: the label holds "
                             f'{int(label.min())}; labels are class indices 0..K-1 (a NaN in a float label file '
                             'reads as a large negative number)')
        meta = dict(meta, index=index, ori_shape=tuple(label.shape))
        label = label.astype(np.uint8) if label.max(initial=0) < 256 else label.astype(np.int64)
        if self.pipeline is not None:
            self.seed_pipeline(index)
            out = self.pipeline(image=image, mask=label)
            image, label = out['image'], out['mask']
        if image.ndim == 3:  # albumentations may hand back [H, W, 1]
            image = image[..., 0]
        meta['img_shape'] = tuple(image.shape)
        return {'img': torch.from_numpy(np.ascontiguousarray(image))[None],
                'gt_seg': torch.from_numpy(np.ascontiguousarray(label).astype(np.int64)), 'meta': meta}


_SLICE_NAME = re.compile(r'^(?P<case>.+?)_slice_?(?P<slice>\d+)$')


def _read_h5(path: Path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError as error:  # h5py is only needed for the official .h5 test volumes
        raise ImportError(f'reading {path} needs h5py (pip install h5py): the official test volumes are HDF5') \
            from error
    with h5py.File(path, 'r') as f:
        return {k: np.asarray(f[k]) for k in keys if k in f}


def _h5_depth(path: Path) -> int:
    try:
        import h5py
    except ImportError as error:
        raise ImportError(f'reading {path} needs h5py (pip install h5py): the official test volumes are HDF5') \
            from error
    with h5py.File(path, 'r') as f:
        return int(f['image'].shape[0])


class SynapseDataset(_SliceDataset):
    """Synapse multi-organ CT (9 classes) in the official layout, as slices.

    The 'train' split reads ``<data_dir>/<name>.npz`` slices named by ``train.txt``; any other split (the official
    'test_vol') reads the volumes ``<data_dir>/<name><volume_suffix>`` named by ``<split>.txt`` and serves them slice
    by slice in order. Volumes may also be ``.npz`` files with 'image' and 'label' arrays [D, H, W].

    Args:
        data_root: Dataset root.
        split: 'train' or 'test_vol' (the list file's stem).
        list_dir: Folder of the list files (default ``<data_root>/lists/lists_<name>``).
        pipeline: An albumentations-style callable ``pipeline(image=hw_uint8, mask=hw)``, or a config dict.
        data_dir: Folder of the split's files (default ``<data_root>/<data_prefix[split]>``).
        volume_suffix: File suffix of the volumes.
        raw_hu: The files hold raw Hounsfield units (window them with ``hu_window``); the official preprocessed
            files are already windowed to [0, 1].
        hu_window: CT window in HU.
        seed: Seed of the augmentation draws.
        max_samples: Keep only the first this many list entries (for smoke tests).
    """

    classes = SYNAPSE_CLASSES
    list_name = 'lists_Synapse'
    data_prefix = {'train': 'train_npz', 'test_vol': 'test_vol_h5'}
    default_volume_suffix = '.npy.h5'
    default_hu_window = SYNAPSE_HU_WINDOW

    def __init__(self, data_root: str, split: str = 'train', list_dir: Optional[str] = None,
                 pipeline: Union[None, Callable, Mapping] = None, data_dir: Optional[str] = None,
                 volume_suffix: Optional[str] = None, raw_hu: bool = False,
                 hu_window: Optional[Tuple[float, float]] = None, seed: int = 0, max_samples: Optional[int] = None):
        super().__init__(pipeline, seed)
        root = Path(data_root).expanduser()
        self.split = split
        self.list_dir = Path(list_dir).expanduser() if list_dir is not None else root / 'lists' / self.list_name
        list_file = self.list_dir / f'{split}.txt'
        if not list_file.is_file():
            raise FileNotFoundError(f'{type(self).__name__}: no list file {list_file} (split={split!r}); expected '
                                    f'one name per line, as the official lists/{self.list_name}/{split}.txt')
        self.names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()][:max_samples]
        if not self.names:
            raise ValueError(f'{type(self).__name__}: {list_file} names no samples')
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else \
            root / self.data_prefix.get(split, split)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f'{type(self).__name__}: no data folder {self.data_dir} for split {split!r}')
        self.volume_suffix = volume_suffix or self.default_volume_suffix
        self.raw_hu = raw_hu
        self.hu_window = tuple(hu_window) if hu_window is not None else self.default_hu_window
        self.is_volume_split = split != 'train'
        self._cache: Tuple[Optional[str], Optional[Dict[str, np.ndarray]]] = (None, None)
        if self.is_volume_split:
            self.samples: List[Tuple[str, int, int]] = []
            for name in self.names:
                depth = self._volume_depth(name)
                self.samples += [(name, k, depth) for k in range(depth)]
        else:
            parsed = []
            for name in self.names:
                match = _SLICE_NAME.match(name)
                parsed.append((match['case'], int(match['slice'])) if match else (name, 0))
            counts = Counter(case for case, _ in parsed)
            self.samples = [(case, k, counts[case]) for case, k in parsed]

    def __len__(self) -> int:
        return len(self.samples)

    def _volume_path(self, name: str) -> Path:
        path = self.data_dir / f'{name}{self.volume_suffix}'
        if not path.is_file():
            raise FileNotFoundError(f'{type(self).__name__}: volume {path} named in {self.split}.txt does not exist')
        return path

    def _volume_depth(self, name: str) -> int:
        path = self._volume_path(name)
        if path.suffix == '.npz':
            with np.load(path) as data:
                return int(data['image'].shape[0])
        return _h5_depth(path)

    def _read_volume(self, name: str) -> Dict[str, np.ndarray]:
        if self._cache[0] != name:  # test loaders read volumes in order: one cached volume avoids re-reading it
            path = self._volume_path(name)
            if path.suffix == '.npz':
                with np.load(path) as data:
                    arrays = {k: data[k] for k in data.files}
            else:
                arrays = _read_h5(path, ('image', 'label', 'origin', 'direction', 'xyz_thickness'))
            for key in ('image', 'label'):
                if key not in arrays or arrays[key].ndim != 3:
                    raise ValueError(f'{path}: expected a 3-D {key!r} array [D, H, W]')
            self._cache = (name, arrays)
        return self._cache[1]

    def _to_uint8(self, image: np.ndarray) -> np.ndarray:
        return unit_to_uint8(ct_window(image, *self.hu_window) if self.raw_hu else image)

    def _load(self, index):
        name, k, depth = self.samples[index]
        meta = {'case_name': name, 'slice_index': k, 'num_slices': depth}
        if self.is_volume_split:
            volume = self._read_volume(name)
            image, label = volume['image'][k], volume['label'][k]
            if 'xyz_thickness' in volume:
                meta['spacing'] = tuple(float(s) for s in np.ravel(volume['xyz_thickness']))
        else:
            path = self.data_dir / f'{self.names[index]}.npz'
            if not path.is_file():
                raise FileNotFoundError(f'{type(self).__name__}: slice {path} named in {self.split}.txt does not exist')
            with np.load(path) as data:
                image, label = data['image'], data['label']
        if image.ndim != 2 or image.shape != label.shape:
            raise ValueError(f'{name} slice {k}: image {image.shape} and label {label.shape} must be equal 2-D shapes')
        return self._to_uint8(image), np.rint(label).astype(np.int64), meta


class AVTDataset(SynapseDataset):
    """Aortic vessel trees (AVT: KiTS, Rider, Dongyang; 2 classes) in the official layout, as slices.

    Slices ``<data_root>/train/<case>_slice_<k>.npz`` and volumes ``<data_root>/test_vol/<case>.h5`` (which also
    hold 'origin', 'direction' and 'xyz_thickness'; the latter goes to ``meta['spacing']``). CT window [-190, 1668]
    HU when ``raw_hu``. Arguments as :class:`SynapseDataset`.
    """

    classes = AVT_CLASSES
    list_name = 'lists_AVT'
    data_prefix = {'train': 'train', 'test_vol': 'test_vol'}
    default_volume_suffix = '.h5'
    default_hu_window = AVT_HU_WINDOW


def _draw_volume(rng: np.random.Generator, slices: int, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: an ellipsoidal organ (label 1) and a thin curved vessel (label 2) on noisy tissue."""
    z = np.arange(slices, dtype=np.float32)[:, None, None]
    y = np.arange(size, dtype=np.float32)[None, :, None]
    x = np.arange(size, dtype=np.float32)[None, None, :]
    # Organ: an ellipsoid with its centre a little off the middle slice, so the end slices may miss it.
    centre = rng.uniform(0.3, 0.7, 2) * size
    axes = rng.uniform(0.15, 0.3, 2) * size
    cz, az = rng.uniform(0.35, 0.65) * slices, rng.uniform(0.35, 0.55) * slices
    angle = rng.uniform(0, np.pi)
    u = (x - centre[1]) * np.cos(angle) + (y - centre[0]) * np.sin(angle)
    v = -(x - centre[1]) * np.sin(angle) + (y - centre[0]) * np.cos(angle)
    organ = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 + ((z - cz) / az) ** 2 <= 1.0
    # Vessel: a sinusoidal tube across the slice, drifting with depth; radius 1..2 pixels.
    amplitude, period = rng.uniform(0.05, 0.15) * size, rng.uniform(0.6, 1.2) * size
    phase, drift, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.8) * size
    radius = rng.uniform(1.0, 2.0)
    label = organ.astype(np.uint8)
    for k in range(slices):
        # Distance to the curve y = c(x), to first order: |y - c(x)| / sqrt(1 + c'(x)^2).
        arg = 2 * np.pi * x[0] / period + phase + 0.2 * k
        across = offset + drift * k + amplitude * np.sin(arg)
        slope = amplitude * 2 * np.pi / period * np.cos(arg)
        label[k][np.abs(y[0] - across) / np.sqrt(1 + slope ** 2) <= radius] = 2
    # Intensities: tissue 0.3, organ 0.55, vessel 0.85, a smooth shading and Gaussian noise.
    levels = np.array([0.3, 0.55, 0.85], dtype=np.float32)
    shading = 0.08 * np.sin(2 * np.pi * (x / size * rng.uniform(0.5, 1.5) + y / size * rng.uniform(0.5, 1.5)))
    image = levels[label] + shading + rng.normal(0.0, 0.07, label.shape).astype(np.float32)
    return unit_to_uint8(image), label


class SyntheticSlicesDataset(_SliceDataset):
    """Synthetic 1-channel CT-like volumes for tests and smoke runs: an organ (ellipsoid, label 1) and a vessel
    (thin curved tube, label 2) on noisy tissue, served slice by slice like the official test volumes.

    Volume ``v`` is a pure function of (seed, v); nothing is downloaded.

    Args:
        num_volumes: Number of volumes.
        slices: Slices per volume.
        size: Side length of a slice.
        seed: Seed of the volumes and of the augmentation draws.
        pipeline: An albumentations-style callable ``pipeline(image=hw_uint8, mask=hw)``, or a config dict.
    """

    classes = ('background', 'organ', 'vessel')

    def __init__(self, num_volumes: int = 4, slices: int = 8, size: int = 64, seed: int = 0,
                 pipeline: Union[None, Callable, Mapping] = None):
        super().__init__(pipeline, seed)
        if num_volumes < 1 or slices < 1:
            raise ValueError(f'num_volumes and slices must be positive, got {num_volumes} and {slices}')
        if size < 16:
            raise ValueError(f'size {size} is too small for the drawn shapes: use at least 16')
        self.num_volumes, self.slices, self.size = num_volumes, slices, size
        self._volumes: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.num_volumes * self.slices

    def volume(self, v: int) -> Tuple[np.ndarray, np.ndarray]:
        """(uint8 image, uint8 label) of volume ``v``, each [slices, size, size]."""
        if v not in self._volumes:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, v]))
            self._volumes[v] = _draw_volume(rng, self.slices, self.size)
        return self._volumes[v]

    def _load(self, index):
        v, k = divmod(index, self.slices)
        image, label = self.volume(v)
        meta = {'case_name': f'synthetic{v:04d}', 'slice_index': k, 'num_slices': self.slices}
        return image[k], label[k].astype(np.int64), meta
