"""What every visionattn dataset shares: a pipeline seeded per (seed, epoch, index), and an epoch that reaches the
DataLoader workers, so a run draws the same augmentations whatever its workers, processes or interruptions."""
from typing import Callable, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ['SeededDataset', 'SharedEpoch', 'build_pipeline', 'to_rgb', 'load_image', 'IMAGE_EXTENSIONS']

# The suffixes of the image files that the folder datasets read (case-insensitive).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def build_pipeline(pipeline: Union[None, Callable, Mapping]) -> Optional[Callable]:
    """A pipeline given as a callable, or as a config dict ``{'type': factory, **kwargs}`` (as configs write it)."""
    if pipeline is None or callable(pipeline):
        return pipeline
    if isinstance(pipeline, Mapping) and callable(pipeline.get('type')):
        kwargs = {k: v for k, v in pipeline.items() if k != 'type'}
        return pipeline['type'](**kwargs)
    raise TypeError(f'pipeline must be a callable or a dict with a callable "type", got {pipeline!r}')


def _check_non_negative_int(value, what: str) -> int:
    """``value`` as an int; a clear error for None, floats, bools and negatives (numpy's SeedSequence, which mixes the
    seeds, only takes non-negative integers and would fail later, in a worker, without naming the argument)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f'{what} must be a non-negative integer, got {value!r}')
    return int(value)


class SharedEpoch:
    """The training epoch in shared memory, so DataLoader workers see ``set_epoch``.

    Persistent workers keep the copy of the dataset they were started with; a plain attribute set in the main
    process never reaches them, and they would repeat the first epoch's augmentations for the whole run.
    """

    def __init__(self, epoch: int = 0):
        self._value = torch.full((), epoch, dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self._value)

    def set(self, epoch: int) -> None:
        self._value.fill_(int(epoch))


class SeededDataset(Dataset):
    """Base of the datasets: holds the pipeline, the seed and the shared epoch; subclasses call
    :meth:`seed_pipeline` before running the pipeline on an item.

    Args:
        pipeline: A callable (albumentations-style) or a config dict with a callable ``type``.
        seed: Seed of the augmentation draws.
    """
    classes: Sequence[str] = ()

    def __init__(self, pipeline: Union[None, Callable, Mapping] = None, seed: int = 0):
        self.pipeline = build_pipeline(pipeline)
        self.seed = _check_non_negative_int(seed, f'{type(self).__name__}: seed')
        self._epoch = SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    @property
    def metainfo(self) -> Dict:
        return {'classes': tuple(self.classes)}

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine before each training epoch: augmentation draws depend on it."""
        self._epoch.set(_check_non_negative_int(epoch, f'{type(self).__name__}.set_epoch: epoch'))

    def seed_pipeline(self, index: int) -> None:
        """Seed the pipeline's random draws for this item: a pure function of (seed, epoch, index), mixed into one
        32-bit seed by numpy's SeedSequence. A pipeline with ``set_epoch`` is told the epoch first."""
        if self.pipeline is not None and hasattr(self.pipeline, 'set_epoch'):
            self.pipeline.set_epoch(self.epoch)  # pipelines whose ops change with the epoch (multi-scale training)
        if self.pipeline is not None and hasattr(self.pipeline, 'set_random_seed'):
            seq = np.random.SeedSequence([self.seed, self.epoch, index])
            self.pipeline.set_random_seed(int(seq.generate_state(1)[0]))


def to_rgb(image):
    """A PIL image as 8-bit RGB. 16-bit greyscale ('I;16*', and 'I' holding values above 255) is scaled down from its
    16-bit range: PIL's ``convert('RGB')`` clips it at 255, which saturates a 16-bit PNG (issue 21). 32-bit float
    images (mode 'F') are refused: their range is unknown (0..1 would come out black from ``convert('RGB')``).
    Alpha is dropped, as timm's and torchvision's loaders drop it."""
    from PIL import Image
    mode = image.mode
    if mode == 'F':
        raise ValueError("32-bit floating-point image (PIL mode 'F'): its value range is unknown, so it cannot be "
                         'mapped to 8-bit RGB; convert it to an 8- or 16-bit image first')
    if mode.startswith('I;16') or mode == 'I':
        grey = np.asarray(image).astype(np.float64)
        if mode.startswith('I;16') or grey.max(initial=0) > 255:
            grey = grey / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), 'L').convert('RGB')
    return image.convert('RGB')


def orientation_hint(image_shape: Sequence[int], expected_shape: Sequence[int]) -> str:
    """A note for a size-mismatch error when the sizes are each other's transposes: :func:`load_image` turns images
    by their EXIF orientation, so a photo tagged "turn 90 degrees" whose annotation was made on the raw bitmap no
    longer matches it."""
    if tuple(image_shape[:2]) == tuple(expected_shape[:2])[::-1] and image_shape[0] != image_shape[1]:
        return ('; the sizes are swapped: the image is read turned by its EXIF orientation tag, so its annotation '
                'was probably made on the raw, unturned pixels')
    return ''


def load_image(path) -> np.ndarray:
    """The image file at ``path`` as an HWC uint8 RGB array (:func:`to_rgb`), upright: the EXIF Orientation tag (JPEG,
    PNG, TIFF, WebP) is applied, as image viewers, mmcv's and detectron2's readers apply it. A phone stores a portrait
    photo as a landscape bitmap tagged "turn 90 degrees"; read raw, it lay on its side. A file that cannot be decoded
    (corrupt, truncated, not an image, a folder, an unsupported mode) raises an error that names the file: PIL's own
    messages for a truncated file ("image file is truncated") do not."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as image:
            ImageOps.exif_transpose(image, in_place=True)  # before to_rgb: transposing keeps any mode (16-bit too)
            return np.array(to_rgb(image))
    except FileNotFoundError:
        raise  # names the file already
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... depending on the decoder
        raise OSError(f'cannot read image {str(path)!r}: {type(err).__name__}: {err}') from err
