"""Person re-identification datasets: the Market-1501, DukeMTMC-reID, CUHK03 (new protocol) and MSMT17 layouts,
synthetic "pedestrians" with a domain gap for tests and smoke runs, and the standard ReID augmentation pipeline.

Each item is ``{'img': uint8 tensor [3, H, W], 'pid': int, 'camid': int, 'index': int, 'path': str}``. The
pipeline is an albumentations-style callable ``pipeline(image=hwc_uint8)``, seeded per item from
(seed, epoch, index). Identities and cameras come from the file names, as the standard parsers read them:

* pid -1 marks "junk" images (Market-1501's bad detections): dropped from the training split, kept in the gallery
  so that the evaluation can exclude them (the official protocol's junk list; open-reid-based code, CORE-ReID's
  included, drops them from every split, which gives the same mAP and CMC);
* pid 0 marks Market-1501's distractors: kept in the gallery as negatives;
* camera ids are 0-based (``c1`` -> 0);
* training identities are relabelled 0..num_pids-1 in sorted order.

For target-domain fine-tuning the training labels can be replaced by cluster ids (:meth:`ReIDDataset.
set_pseudo_labels`); they live in shared memory, so persistent DataLoader workers see each epoch's labels.
"""
import re
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visionattn.data.base import IMAGE_EXTENSIONS, SeededDataset, load_image

__all__ = ['ReIDDataset', 'Market1501', 'DukeMTMC', 'CUHK03', 'MSMT17', 'SyntheticPedestrians', 'ReIDTestDataset',
           'reid_transforms', 'ReIDRandomErasing', 'GrayscalePatchReplacement']

REID_SPLITS = ('train', 'query', 'gallery')
# '<pid>_c<cam>...' with pid possibly -1: Market-1501, DukeMTMC-reID and cuhk03-np share this naming.
_PID_CAM_PATTERN = re.compile(r'^(-?\d+)_c(\d+)')


def _check_split(split: str) -> None:
    if split not in REID_SPLITS:
        raise ValueError(f'split must be one of {REID_SPLITS}, got {split!r}')


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f'{what}: folder {str(path)!r} not found')
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f'{what}: file {str(path)!r} not found')
    return path


class ReIDDataset(SeededDataset):
    """Base of the ReID datasets: a list of (path, pid, camid) records, the relabelling of training identities,
    and pseudo-labels in shared memory.

    Subclasses fill the records and call :meth:`_finalize`. Attributes after construction: ``pids`` (np.int64,
    the labels items carry: relabelled identities for 'train', raw ids for 'query'/'gallery', or pseudo-labels once
    set), ``camids`` (np.int64), ``num_pids`` (identities, junk excluded), ``num_cams`` (largest camera id + 1) and
    ``true_pids`` (the identities read from the data, never replaced by pseudo-labels).

    Args:
        split: 'train', 'query' or 'gallery'.
        pipeline: An albumentations-style callable or a config dict ``{'type': factory, **kwargs}``.
        seed: Seed of the augmentation draws.
    """

    def __init__(self, split: str = 'train', pipeline: Union[None, Callable, Mapping] = None, seed: int = 0):
        _check_split(split)
        super().__init__(pipeline, seed)
        self.split = split
        self.paths: List[str] = []
        self.true_pids = np.zeros(0, dtype=np.int64)
        self.camids = np.zeros(0, dtype=np.int64)
        self.num_pids = 0
        self.num_cams = 0
        self._source: Optional[Path] = None  # the folder the records come from (named in errors)
        self._labels = torch.zeros(0, dtype=torch.int64).share_memory_()

    def _finalize(self, records: Sequence[Tuple[str, int, int]], relabel: bool) -> None:
        """Store (path, pid, camid) records; ``relabel`` maps the identities to 0..n-1 in sorted order."""
        if not records:
            where = f' in {str(self._source)!r}' if self._source is not None else ''
            raise FileNotFoundError(f'{type(self).__name__}: no images found for split {self.split!r}{where} '
                                    f'(image suffixes: {", ".join(IMAGE_EXTENSIONS)})')
        self.paths = [str(path) for path, _, _ in records]
        pids = np.array([pid for _, pid, _ in records], dtype=np.int64)
        if relabel:
            if (pids < 0).any():  # junk would be relabelled into a real identity
                bad = int(np.flatnonzero(pids < 0)[0])
                raise ValueError(f'{type(self).__name__}: training image {self.paths[bad]!r} has identity '
                                 f'{int(pids[bad])}; training identities must be >= 0 (junk is not training data)')
            unique = np.unique(pids)
            pids = np.searchsorted(unique, pids).astype(np.int64)
        self.true_pids = pids
        self.camids = np.array([cam for _, _, cam in records], dtype=np.int64)
        self.num_pids = int(len(np.unique(pids[pids >= 0])))
        self.num_cams = int(self.camids.max()) + 1
        # A shared-memory tensor: persistent DataLoader workers keep the dataset they started with, so labels
        # written into a plain array in the main process would never reach them (same reason as SharedEpoch).
        self._labels = torch.from_numpy(pids.copy()).share_memory_()

    @property
    def pids(self) -> np.ndarray:
        """The labels items carry (a copy): identities, or pseudo-labels once :meth:`set_pseudo_labels` ran."""
        return self._labels.numpy().copy()

    def set_pseudo_labels(self, labels: np.ndarray) -> None:
        """Replace the labels the items carry (target-domain fine-tuning: cluster ids, recomputed every epoch).

        Args:
            labels: One integer label per item (len(dataset) of them); a negative label marks an outlier, which
                :class:`~visionattn.heads.reid.evaluation.PKSampler` does not draw.
        """
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(self):
            raise ValueError(f'set_pseudo_labels needs one label per item: {len(self)} labels, got an array of shape '
                             f'{labels.shape}')
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f'pseudo-labels must be integers, got dtype {labels.dtype}')
        self._labels.copy_(torch.from_numpy(labels.astype(np.int64)))

    def reset_labels(self) -> None:
        """Back to the identities read from the data."""
        self._labels.copy_(torch.from_numpy(self.true_pids))

    def __len__(self) -> int:
        return len(self.paths)

    def _load_image(self, index: int) -> np.ndarray:
        return load_image(self.paths[index])

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} items')
        image = self._load_image(index)
        if self.pipeline is not None:
            self.seed_pipeline(index)
            image = self.pipeline(image=image)['image']
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f'{type(self).__name__}[{index}] ({self.paths[index]}): the pipeline must output an HWC '
                             f'uint8 RGB image, got {image.dtype} of shape {image.shape}')
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return {'img': img, 'pid': int(self._labels[index]), 'camid': int(self.camids[index]), 'index': index,
                'path': self.paths[index]}


def parse_pid_camid(name: str) -> Tuple[int, int]:
    """(pid, 0-based camid) from a Market-1501 / DukeMTMC / cuhk03-np file name such as ``0002_c1s1_000451_03.jpg``,
    ``0001_c2_f0046182.jpg`` or ``0001_c1_1.png`` (pid -1 for junk)."""
    match = _PID_CAM_PATTERN.match(name)
    if match is None:
        raise ValueError(f'file name {name!r} does not follow the "<pid>_c<camera>..." convention')
    pid, cam = int(match.group(1)), int(match.group(2))
    if cam < 1:
        raise ValueError(f'file name {name!r}: camera numbers start at 1, got c{cam}')
    return pid, cam - 1


class _FolderReIDDataset(ReIDDataset):
    """Datasets in the Market-1501 layout: ``bounding_box_train``, ``query`` and ``bounding_box_test`` folders of
    images named ``<pid>_c<camera>...``."""
    folders = {'train': 'bounding_box_train', 'query': 'query', 'gallery': 'bounding_box_test'}
    max_pid: Optional[int] = None

    def _scan(self, root: Path, train_dir: Optional[str] = None) -> None:
        name = train_dir if self.split == 'train' and train_dir else self.folders[self.split]
        folder = _require_dir(root / name, type(self).__name__)
        self._source = folder
        records = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                continue
            pid, camid = parse_pid_camid(path.name)
            if pid == -1 and self.split == 'train':
                continue  # junk detections are not training data
            if pid < -1 or (self.max_pid is not None and pid > self.max_pid):
                raise ValueError(f'{path}: identity {pid} outside -1..{self.max_pid}')
            records.append((str(path), pid, camid))
        self._finalize(records, relabel=self.split == 'train')


class Market1501(_FolderReIDDataset):
    """Market-1501 (Zheng et al., ICCV 2015): 751 training identities, 750 test identities, 6 cameras.

    Names like ``0002_c1s1_000451_03.jpg``; gallery pid 0 = distractors (negatives), pid -1 = junk (excluded by
    the evaluation, dropped from training).

    Args:
        data_root: The folder holding ``bounding_box_train``, ``query`` and ``bounding_box_test``.
        split: 'train', 'query' or 'gallery'.
        pipeline: An albumentations-style callable or config dict.
        seed: Seed of the augmentation draws.
        train_dir: Another training folder under ``data_root``, e.g. the CamStyle-augmented
            ``bounding_box_train_all_merge`` that CORE-ReID's source pre-training reads (generated names such as
            ``0002_c1s1_000451_03_fake_1to2.jpg`` keep the source identity and camera).
    """
    max_pid = 1501

    def __init__(self, data_root: str, split: str = 'train', pipeline: Union[None, Callable, Mapping] = None,
                 seed: int = 0, train_dir: Optional[str] = None):
        super().__init__(split, pipeline, seed)
        self.data_root = Path(data_root).expanduser()
        self._scan(_require_dir(self.data_root, type(self).__name__), train_dir)


class DukeMTMC(Market1501):
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 702 training identities, 8 cameras, names like
    ``0001_c2_f0046182.jpg``; the Market-1501 folder layout. Args as :class:`Market1501`."""
    max_pid = None


class CUHK03(_FolderReIDDataset):
    """CUHK03 under the new protocol (Zhong et al., CVPR 2017, "cuhk03-np"): 767 training / 700 test identities,
    2 cameras, ``<root>/{detected,labeled}/bounding_box_train|query|bounding_box_test`` with names like
    ``0001_c1_1.png``.

    Args:
        data_root: The ``cuhk03-np`` folder, or a folder that holds it.
        split: 'train', 'query' or 'gallery'.
        pipeline: An albumentations-style callable or config dict.
        seed: Seed of the augmentation draws.
        variant: 'detected' (the usual benchmark) or 'labeled' boxes.
        train_dir: Another training folder under the variant's folder (e.g. CamStyle-augmented images).
    """

    def __init__(self, data_root: str, split: str = 'train', pipeline: Union[None, Callable, Mapping] = None,
                 seed: int = 0, variant: str = 'detected', train_dir: Optional[str] = None):
        if variant not in ('detected', 'labeled'):
            raise ValueError(f"CUHK03 variant must be 'detected' or 'labeled', got {variant!r}")
        super().__init__(split, pipeline, seed)
        root = Path(data_root).expanduser()
        if (root / 'cuhk03-np').is_dir():
            root = root / 'cuhk03-np'
        self.data_root = root
        self.variant = variant
        self._scan(_require_dir(root / variant, 'CUHK03'), train_dir)


class MSMT17(ReIDDataset):
    """MSMT17 (Wei et al., CVPR 2018): 1041 training / 3060 test identities, 15 cameras.

    ``<root>/train`` and ``<root>/test`` image folders with list files ``list_train.txt``, ``list_val.txt``,
    ``list_query.txt`` and ``list_gallery.txt`` of ``<relative path> <pid>`` lines (paths relative to ``train/``
    for train/val, to ``test/`` for query/gallery). The camera is the third field of the file name
    (``0000_000_01_0303morning_0015_0.jpg`` -> camera 01, i.e. 0). Training uses list_train + list_val (32621
    images of the 1041 training identities), as CORE-ReID's and the other open-reid-based UDA codes' loader does;
    ``with_val=False`` keeps list_train only (torchreid's default).

    Args:
        data_root: The MSMT17 folder (MSMT17_V1 or V2 layouts alike).
        split: 'train', 'query' or 'gallery'.
        pipeline: An albumentations-style callable or config dict.
        seed: Seed of the augmentation draws.
        with_val: Add the validation list to the training split.
    """

    def __init__(self, data_root: str, split: str = 'train', pipeline: Union[None, Callable, Mapping] = None,
                 seed: int = 0, with_val: bool = True):
        super().__init__(split, pipeline, seed)
        root = _require_dir(Path(data_root).expanduser(), 'MSMT17')
        self.data_root = root
        if split == 'train':
            lists = [('train', 'list_train.txt')] + ([('train', 'list_val.txt')] if with_val else [])
        else:
            lists = [('test', f'list_{split}.txt')]
        records = []
        self._source = root
        for folder_name, list_name in lists:
            folder = _require_dir(root / folder_name, 'MSMT17')
            records += self._read_list(_require_file(root / list_name, 'MSMT17'), folder)
        self._finalize(records, relabel=split == 'train')

    @staticmethod
    def _read_list(list_path: Path, folder: Path) -> List[Tuple[str, int, int]]:
        records = []
        for line_number, line in enumerate(list_path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f'{list_path}:{line_number}: expected "<path> <pid>", got {line!r}')
            rel_path = fields[0]
            try:
                pid = int(fields[1])
            except ValueError:
                raise ValueError(f'{list_path}:{line_number}: the identity {fields[1]!r} is not an integer') from None
            if pid < 0:
                raise ValueError(f'{list_path}:{line_number}: identity {pid} is negative (MSMT17 has no junk ids)')
            name_fields = Path(rel_path).name.split('_')
            if len(name_fields) < 3 or not name_fields[2].isdigit() or int(name_fields[2]) < 1:
                raise ValueError(f'{list_path}:{line_number}: {rel_path!r} does not follow MSMT17\'s '
                                 f'"<pid>_<index>_<camera 01-15>_..." naming')
            records.append((str(folder / rel_path), pid, int(name_fields[2]) - 1))
        return records


# ----------------------------------------------------------------------------------------------------------------
# Synthetic pedestrians

_DOMAIN_CODES = {'source': 1, 'target': 2}
# A palette of well-separated clothing colours (RGB); identities combine two of them, so no single colour names one.
_PALETTE = np.array([
    [200, 30, 30], [30, 150, 40], [40, 60, 190], [220, 200, 40], [230, 120, 20], [130, 40, 160], [20, 170, 180],
    [235, 235, 235], [35, 35, 35], [140, 90, 50], [230, 130, 170], [110, 120, 130],
], dtype=np.float32)
_TEXTURES = ('plain', 'hstripes', 'vstripes', 'checks')
# The target domain's global colour cast: a partial channel rotation, warm gains and a brightness lift.
_TARGET_MIX = np.array([[0.70, 0.30, 0.00], [0.00, 0.70, 0.30], [0.30, 0.00, 0.70]], dtype=np.float32)
_TARGET_GAIN = np.array([1.15, 0.95, 0.75], dtype=np.float32)
_TARGET_OFFSET = 18.0


class SyntheticPedestrians(ReIDDataset):
    """Drawn "pedestrians" for tests and smoke runs: identity = clothing, camera = colour shift, domain = cast.

    Each identity has an upper-body and a lower-body colour from a shared palette, a texture (plain, horizontal or
    vertical stripes, checks) in a second colour and a stripe period; each image jitters the body's position, width
    and proportions, the colours, and adds a noisy background and pixel noise. Each camera multiplies the channels by
    its own gains and shifts the brightness. The 'target' domain has its own identities (another draw of colour
    pairs and textures) and a global colour cast (a partial channel rotation and gains), so a model trained on the
    source transfers only partly.

    Splits: 'train' holds ``num_ids`` identities x ``num_cams`` cameras x ``per_cam`` images, labels relabelled
    0..num_ids-1. 'query' and 'gallery' hold fresh images (other poses and noise) of the same identities by default,
    which a handful of training identities needs for the smoke runs to measure adaptation rather than noise;
    ``new_test_ids=True`` uses ``num_ids`` other identities of the domain instead, as the real benchmarks do. Per
    test identity, ``max(1, per_cam // 2)`` images of one camera are queries and all its other images, from every
    camera, are the gallery. Every image is a pure function of (seed, domain, train or test, identity, camera,
    instance).

    Args:
        num_ids: Identities per split.
        num_cams: Cameras.
        per_cam: Images per identity and camera.
        img_size: (height, width) of the drawn images.
        domain: 'source' or 'target'.
        split: 'train', 'query' or 'gallery'.
        seed: Seed of the identities, cameras, images and augmentation draws.
        pipeline: An albumentations-style callable or config dict.
        new_test_ids: Query/gallery use identities other than the training ones.
    """

    def __init__(self, num_ids: int = 8, num_cams: int = 2, per_cam: int = 4, img_size: Sequence[int] = (64, 32),
                 domain: str = 'source', split: str = 'train', seed: int = 0,
                 pipeline: Union[None, Callable, Mapping] = None, new_test_ids: bool = False):
        if domain not in _DOMAIN_CODES:
            raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
        if num_ids < 1 or num_cams < 1 or per_cam < 1:
            raise ValueError(f'num_ids, num_cams and per_cam must be positive, got {num_ids}, {num_cams}, {per_cam}')
        if 2 * num_ids > len(_PALETTE) * (len(_PALETTE) - 1) * len(_TEXTURES):
            raise ValueError(f'num_ids={num_ids} is more than the distinct clothing combinations allow '
                             f'({len(_PALETTE) * (len(_PALETTE) - 1) * len(_TEXTURES) // 2} per split)')
        if split != 'train' and num_cams < 2:
            raise ValueError('query/gallery need at least 2 cameras (same-camera matches are not counted)')
        if len(img_size) != 2 or img_size[0] < 16 or img_size[1] < 8:
            raise ValueError(f'img_size must be (height >= 16, width >= 8), got {tuple(img_size)}')
        super().__init__(split, pipeline, seed)
        self.domain = domain
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.num_ids_per_split = num_ids
        self._domain_code = _DOMAIN_CODES[domain]
        # identity numbers: training ones 0..num_ids-1, test ones num_ids..2*num_ids-1 (of this domain)
        id_offset = num_ids if split != 'train' and new_test_ids else 0
        self._split_code = 0 if split == 'train' else 1  # query and gallery: disjoint images of one test pool
        identities = self._draw_identities(2 * num_ids)
        cam_rng = np.random.default_rng(np.random.SeedSequence([seed, self._domain_code, 7]))
        self._cam_gain = cam_rng.uniform(0.8, 1.2, size=(num_cams, 3)).astype(np.float32)
        self._cam_offset = cam_rng.uniform(-25, 25, size=num_cams).astype(np.float32)
        self._cam_background = cam_rng.uniform(90, 160, size=(num_cams, 3)).astype(np.float32)
        records = []
        self._specs: List[Tuple[int, int, int]] = []  # (identity number, camera, instance)
        num_query = max(1, per_cam // 2)
        for k in range(num_ids):
            identity = id_offset + k
            query_cam = k % num_cams
            for cam in range(num_cams):
                for instance in range(per_cam):
                    is_query = cam == query_cam and instance < num_query
                    if split == 'query' and not is_query or split == 'gallery' and is_query:
                        continue
                    self._specs.append((identity, cam, instance))
                    records.append((f'synthetic://{domain}/{split}/{identity:04d}_c{cam + 1}_{instance:03d}', identity,
                                    cam))
        self._identities = identities
        self._finalize(records, relabel=split == 'train')
        self.num_cams = num_cams

    def _draw_identities(self, count: int) -> List[Dict]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self._domain_code, 3]))
        n = len(_PALETTE)
        # distinct (upper, lower, texture) combinations, drawn without replacement
        combos = rng.permutation(n * (n - 1) * len(_TEXTURES))[:count]
        identities = []
        for code in combos:
            texture, rest = divmod(int(code), n * (n - 1))
            upper, lower = divmod(rest, n - 1)
            lower = lower + (lower >= upper)  # upper and lower colours differ
            identities.append({
                'upper': _PALETTE[upper], 'lower': _PALETTE[lower], 'texture': _TEXTURES[texture],
                'second': _PALETTE[int(rng.integers(n))], 'period': int(rng.integers(2, 5)),
                'skin': np.array([225, 180, 140], dtype=np.float32) * rng.uniform(0.6, 1.05),
                'legs': rng.uniform(0.5, 0.6),  # where the upper body ends, as a fraction of the height
            })
        return identities

    def _texture(self, identity: Dict, height: int, width: int, phase: int) -> np.ndarray:
        rows, cols = np.mgrid[0:height, 0:width]
        period = identity['period']
        if identity['texture'] == 'hstripes':
            return ((rows + phase) // period) % 2 == 1
        if identity['texture'] == 'vstripes':
            return ((cols + phase) // period) % 2 == 1
        if identity['texture'] == 'checks':
            return (((rows + phase) // period) + (cols // period)) % 2 == 1
        return np.zeros((height, width), dtype=bool)

    def _load_image(self, index: int) -> np.ndarray:
        number, cam, instance = self._specs[index]
        identity = self._identities[number]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self._domain_code, self._split_code, number, cam,
                                                            instance, 11]))
        height, width = self.img_size
        # background: the camera's colour, shifted per image (another spot of the scene), with blocky noise
        coarse = rng.normal(0, 18, size=(height // 8 + 1, width // 8 + 1, 3))
        background = self._cam_background[cam] + rng.normal(0, 25, size=3)
        image = background + np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
        # body layout, jittered per image
        centre = width / 2 + rng.uniform(-0.12, 0.12) * width
        half_width = rng.uniform(0.22, 0.3) * width
        top = int(rng.uniform(0.02, 0.08) * height)
        neck = top + int(rng.uniform(0.12, 0.16) * height)
        waist = int((identity['legs'] + rng.uniform(-0.03, 0.03)) * height)
        feet = int(rng.uniform(0.92, 0.99) * height)
        left, right = int(round(centre - half_width)), int(round(centre + half_width))
        left, right = max(left, 0), min(right, width)
        jitter = lambda: rng.normal(0, 10, size=3)  # noqa: E731  (per-image colour jitter)
        # head
        head_half = max(1, int(half_width * 0.55))
        image[top:neck, int(centre) - head_half:int(centre) + head_half] = identity['skin'] + jitter()
        # upper body: main colour with the identity's texture in its second colour
        phase = int(rng.integers(0, identity['period'] * 2))
        pattern = self._texture(identity, waist - neck, right - left, phase)
        upper = np.where(pattern[..., None], identity['second'] + jitter(), identity['upper'] + jitter())
        image[neck:waist, left:right] = upper
        # lower body: two legs with a gap
        gap = max(1, int(half_width * 0.2))
        image[waist:feet, left:int(centre) - gap // 2] = identity['lower'] + jitter()
        image[waist:feet, int(centre) + (gap + 1) // 2:right] = identity['lower'] + jitter()
        image = image + rng.normal(0, 8, size=image.shape)
        # camera: per-channel gains and a brightness shift
        image = image * self._cam_gain[cam] + self._cam_offset[cam]
        if self.domain == 'target':
            image = (image @ _TARGET_MIX.T) * _TARGET_GAIN + _TARGET_OFFSET
        return np.clip(np.round(image), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Test sets

def _build_dataset(spec: Union[Dataset, Mapping]) -> Dataset:
    if isinstance(spec, Dataset):
        return spec
    if isinstance(spec, Mapping):
        factory = spec.get('type')
        if isinstance(factory, str) and factory in __all__ and factory != 'ReIDTestDataset':
            factory = globals()[factory]  # one of this module's datasets named by string
        if callable(factory):
            return factory(**{k: v for k, v in spec.items() if k != 'type'})
    raise TypeError(f'expected a dataset or a dict whose "type" is a dataset class (or the name of one of '
                    f'{__all__[:6]}), got {spec!r}')


class ReIDTestDataset(Dataset):
    """A retrieval test set: the query set followed by the gallery; items gain ``'is_query'`` (bool), which
    :class:`~visionattn.heads.reid.evaluation.ReIDMetric` uses to split the features again. ``index`` is the
    position in the concatenation.

    Args:
        query: The query dataset, or a config dict with the class as ``type``.
        gallery: The gallery dataset, or a config dict.
    """

    def __init__(self, query: Union[Dataset, Mapping], gallery: Union[Dataset, Mapping]):
        self.query = _build_dataset(query)
        self.gallery = _build_dataset(gallery)
        self.num_query = len(self.query)
        if self.num_query == 0 or len(self.gallery) == 0:
            raise ValueError(f'ReIDTestDataset needs a non-empty query and gallery, got {self.num_query} and '
                             f'{len(self.gallery)} items')

    @property
    def pids(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.query.pids), np.asarray(self.gallery.pids)])

    @property
    def camids(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.query.camids), np.asarray(self.gallery.camids)])

    @property
    def metainfo(self) -> Dict:
        return {'num_query': self.num_query, 'num_gallery': len(self.gallery)}

    def __len__(self) -> int:
        return self.num_query + len(self.gallery)

    def __getitem__(self, index: int) -> Dict:
        if not 0 <= index < len(self):
            raise IndexError(f'index {index} out of range for {len(self)} items')
        is_query = index < self.num_query
        item = dict(self.query[index] if is_query else self.gallery[index - self.num_query])
        item['index'] = index
        item['is_query'] = is_query
        return item


# ----------------------------------------------------------------------------------------------------------------
# Transforms

# The official code erases on the normalised tensor with the value ImageNet-mean[c]; before normalisation (here the
# data preprocessor normalises) that is the pixel 255 * mean * (1 + std).
_ERASE_FILL = tuple(int(round(255 * m * (1 + s))) for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))


def _check_rectangle_args(name: str, area_range: Sequence[float], min_aspect: float) -> Tuple[float, float]:
    area_range = tuple(area_range)
    if len(area_range) != 2 or not 0 < area_range[0] <= area_range[1] < 1:
        raise ValueError(f'{name}: area_range must be (low, high) area fractions with 0 < low <= high < 1 (a '
                         f'rectangle as large as the image never fits), got {area_range}')
    if not 0 < min_aspect <= 1:
        raise ValueError(f'{name}: min_aspect must lie in (0, 1] (aspect ratios are drawn in [min_aspect, '
                         f'1 / min_aspect]), got {min_aspect}')
    return area_range


def _draw_rectangle(rng, height: int, width: int, area_range: Sequence[float], min_aspect: float,
                    attempts: int = 100) -> Optional[Tuple[int, int, int, int]]:
    """Zhong et al.'s rectangle: area fraction in ``area_range``, aspect ratio in [min_aspect, 1/min_aspect],
    redrawn until it fits (``attempts`` tries); (top, left, h, w) or None."""
    for _ in range(attempts):
        area = rng.uniform(*area_range) * height * width
        aspect = rng.uniform(min_aspect, 1 / min_aspect)
        rect_h, rect_w = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if rect_w < width and rect_h < height:
            return rng.randint(0, height - rect_h), rng.randint(0, width - rect_w), rect_h, rect_w
    return None


class ReIDRandomErasing(A.ImageOnlyTransform):
    """Random Erasing (Zhong et al., AAAI 2020) as the ReID code uses it: with probability ``p`` one rectangle
    (area 2-40 %, aspect 0.3-3.3) is filled with ``fill`` (default: the value the official code writes, see
    ``_ERASE_FILL``)."""

    def __init__(self, p: float = 0.5, area_range: Sequence[float] = (0.02, 0.4), min_aspect: float = 0.3,
                 fill: Sequence[int] = _ERASE_FILL):
        super().__init__(p=p)
        self.area_range = _check_rectangle_args(type(self).__name__, area_range, min_aspect)
        self.min_aspect = min_aspect
        fill = tuple(np.atleast_1d(np.asarray(fill)).tolist())
        if len(fill) not in (1, 3) or not all(isinstance(v, (int, float)) and 0 <= v <= 255 for v in fill):
            raise ValueError(f'{type(self).__name__}: fill must be 1 or 3 (RGB) pixel values in 0..255, got {fill}')
        self.fill = fill

    def get_params_dependent_on_data(self, params, data):
        height, width = params['shape'][:2]
        return {'rect': _draw_rectangle(self.py_random, height, width, self.area_range, self.min_aspect)}

    def apply(self, img: np.ndarray, rect=None, **params) -> np.ndarray:
        if rect is None:
            return img
        top, left, h, w = rect
        img = img.copy()
        img[top:top + h, left:left + w] = np.asarray(self.fill, dtype=img.dtype)[:img.shape[-1]]
        return img

    def get_transform_init_args_names(self):
        return ('area_range', 'min_aspect', 'fill')


class GrayscalePatchReplacement(A.ImageOnlyTransform):
    """Random grayscale patch replacement (Gong et al., arXiv 2101.08533), which CORE-ReID applies with p = 0.4 in
    both training stages: one rectangle, drawn as random erasing draws it, is replaced by its grayscale version.

    CORE-ReID's version (from fast-reid) mixes up PIL's (width, height) order: the rectangle must satisfy w < H and
    h < W, its top row is drawn in [0, H - w] and its left column in [0, W - h], and the patch is rows top..top+h,
    columns left..left+w, clipped at the border. Matched here, so the patch statistics are the official ones.
    """

    def __init__(self, p: float = 0.4, area_range: Sequence[float] = (0.02, 0.4), min_aspect: float = 0.3):
        super().__init__(p=p)
        self.area_range = _check_rectangle_args(type(self).__name__, area_range, min_aspect)
        self.min_aspect = min_aspect

    def get_params_dependent_on_data(self, params, data):
        height, width = params['shape'][:2]
        rng = self.py_random
        for _ in range(100):
            area = rng.uniform(*self.area_range) * height * width
            aspect = rng.uniform(self.min_aspect, 1 / self.min_aspect)
            rect_h, rect_w = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if rect_w < height and rect_h < width:  # the official (swapped) check, see the class docstring
                left = rng.randint(0, width - rect_h)
                top = rng.randint(0, height - rect_w)
                return {'rect': (top, left, rect_h, rect_w)}
        return {'rect': None}

    def apply(self, img: np.ndarray, rect=None, **params) -> np.ndarray:
        if rect is None:
            return img
        top, left, h, w = rect
        img = img.copy()
        patch = img[top:top + h, left:left + w].astype(np.float32)
        gray = patch @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's 'L'
        img[top:top + h, left:left + w] = np.round(gray)[..., None].astype(img.dtype)
        return img

    def get_transform_init_args_names(self):
        return ('area_range', 'min_aspect')


def reid_transforms(train: bool, img_size: Sequence[int] = (256, 128), random_erasing: float = 0.5,
                    hflip: float = 0.5, pad: int = 10, gray_patch: float = 0.4) -> A.Compose:
    """The ReID pipeline of CORE-ReID (open-reid lineage): bicubic resize to ``img_size``; for training, horizontal
    flip, edge-replicating padding by ``pad`` and a random crop back to ``img_size``, grayscale patch replacement,
    and random erasing. CORE-ReID uses gray_patch 0.4 in both stages and random erasing 0.5 only in target
    fine-tuning (pass ``random_erasing=0`` for its source pre-training). Outputs uint8 HWC images; normalisation
    happens in the engine's data preprocessor.

    Args:
        train: Training pipeline (else resize only).
        img_size: (height, width), 256x128 in the papers.
        random_erasing: Probability of random erasing (0.5 in the official code; 0 disables).
        hflip: Probability of the horizontal flip.
        pad: Padding before the random crop (pixels per side, edge mode as the official ``T.Pad(10,
            padding_mode='edge')``; 0 disables both).
        gray_patch: Probability of grayscale patch replacement (0.4 in CORE-ReID; 0 disables).
    """
    if isinstance(img_size, (int, np.integer)) or len(img_size) != 2 or min(img_size) < 1:
        raise ValueError(f'img_size must be (height, width) with both >= 1, got {img_size!r}')
    for name, value in (('random_erasing', random_erasing), ('hflip', hflip), ('gray_patch', gray_patch)):
        if not 0 <= value <= 1:
            raise ValueError(f'{name} is a probability, got {value}')
    if pad < 0:
        raise ValueError(f'pad must be >= 0, got {pad}')
    height, width = int(img_size[0]), int(img_size[1])
    ops = [A.Resize(height, width, interpolation=cv2.INTER_CUBIC)]  # torchvision's interpolation=3 (bicubic)
    if train:
        if hflip > 0:
            ops.append(A.HorizontalFlip(p=hflip))
        if pad > 0:
            ops += [A.Pad(padding=pad, border_mode=cv2.BORDER_REPLICATE), A.RandomCrop(height, width)]
        if gray_patch > 0:
            ops.append(GrayscalePatchReplacement(p=gray_patch))
        if random_erasing > 0:
            ops.append(ReIDRandomErasing(p=random_erasing))
    return A.Compose(ops)
