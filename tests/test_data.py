"""Dataset behaviour the engine relies on, over the datasets that need no files."""
import pytest
import torch
from torch.utils.data import DataLoader
from visionattn.heads.classification.data import DigitsDataset
from visionattn.heads.reid.data import SyntheticPedestrians, reid_transforms
from visionattn.heads.segmentation.data import SyntheticShapesDataset
from visionattn.heads.segmentation.medical_data import SyntheticSlicesDataset, medical_transforms
from visionattn.heads.segmentation.transforms import segmentation_transforms

from visionattn.data import classification_transforms

DATASETS = {
    'digits': lambda: DigitsDataset('train', classification_transforms(True, 32, scale=(0.3, 1.0), hflip=0.5),
                                    max_samples=8),
    'synthetic_slices': lambda: SyntheticSlicesDataset(num_volumes=2, slices=4, size=32,
                                                       pipeline=medical_transforms(True, 32)),
    'synthetic_shapes': lambda: SyntheticShapesDataset(num_samples=4, img_size=32,
                                                       pipeline=segmentation_transforms(True, 32)),
    'synthetic_pedestrians': lambda: SyntheticPedestrians(num_ids=2, per_cam=2,
                                                          pipeline=reid_transforms(True, (64, 32))),
}


def _images(loader):
    return torch.cat([batch['img'].flatten(1).float() for batch in loader])


@pytest.mark.parametrize('name', sorted(DATASETS))
def test_persistent_workers_see_set_epoch(name):
    # Augmentations are seeded per (seed, epoch, index); persistent workers keep the dataset copy they started
    # with, so the epoch must reach them through shared memory, or every epoch repeats the first one's draws.
    dataset = DATASETS[name]()
    loader = DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True,
                        collate_fn=lambda items: {'img': torch.stack([item['img'] for item in items])})
    first = _images(loader)
    dataset.set_epoch(3)
    third = _images(loader)
    assert not torch.equal(first, third)
    fresh = DATASETS[name]()
    fresh.set_epoch(3)
    want = torch.stack([fresh[i]['img'].flatten().float() for i in range(len(fresh))])
    assert torch.equal(third, want)


def test_image_folder_scales_16_bit_greyscale(tmp_path):
    # Issue 21: PIL's convert('RGB') clipped a 16-bit PNG at 255, so the image came out saturated.
    import numpy as np
    from PIL import Image
    from visionattn.heads.classification.data import ImageFolderDataset
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    (tmp_path / 'a').mkdir()
    Image.fromarray(ramp).save(tmp_path / 'a' / 'ramp.png')
    image, label = ImageFolderDataset(str(tmp_path))._load(0)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and label == 0
    np.testing.assert_allclose(image[..., 0], np.rint(ramp / 257.0), atol=1)
    assert (image[..., 0] == image[..., 2]).all()


def test_to_rgb_refuses_float_images_and_load_image_names_the_file(tmp_path):
    # A float TIFF in 0..1 used to come out of convert('RGB') all black; a truncated JPEG failed with PIL's "image
    # file is truncated", which names no file.
    import io

    import numpy as np
    from PIL import Image

    from visionattn.data.base import to_rgb
    with pytest.raises(ValueError, match="mode 'F'"):
        to_rgb(Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(buffer, 'JPEG')
    path = tmp_path / 'cut.jpg'
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    from visionattn.data import base
    with pytest.raises(OSError, match='cut.jpg'):
        base.load_image(path)



def _cut_jpeg(path):
    import io

    import numpy as np
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(buffer, 'JPEG')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    return path


@pytest.mark.parametrize('task', ['classification', 'segmentation', 'detection', 'compression'])
def test_every_task_names_an_image_file_it_cannot_read(tmp_path, task):
    # each task's reader opened images itself, so a truncated file failed with PIL's "image file is truncated",
    # which names no file (and segmentation's convert('RGB') turned a float TIFF black); all read through load_image
    path = _cut_jpeg(tmp_path / 'a' / 'cut.jpg')
    if task == 'classification':
        from visionattn.heads.classification.data import ImageFolderDataset
        read = lambda: ImageFolderDataset(str(tmp_path))._load(0)  # noqa: E731
    elif task == 'segmentation':
        from visionattn.heads.segmentation.data import _read_image
        read = lambda: _read_image(path)  # noqa: E731
    elif task == 'detection':
        from visionattn.heads.detection.data import _read_image
        read = lambda: _read_image(path, 7)  # noqa: E731
    else:
        from visionattn.heads.compression.data import load_images
        read = lambda: load_images(str(tmp_path), ())  # noqa: E731
    with pytest.raises(OSError, match='cut.jpg'):
        read()


def _save_oriented(path, array, orientation, **kwargs):
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    Image.fromarray(array).save(path, exif=exif.tobytes(), **kwargs)


def test_load_image_applies_the_exif_orientation(tmp_path):
    # A phone stores a portrait photo as a landscape bitmap plus Orientation=6 ("turn 90 degrees clockwise"); every
    # viewer (and PIL's exif_transpose, mmcv's and detectron2's readers) shows it upright, load_image showed it on its
    # side. Orientations 2..8 are mirrors and quarter turns of the stored pixels.
    import numpy as np
    from PIL import Image, ImageOps

    from visionattn.data.base import load_image
    raw = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)  # 4 rows, 6 columns: no symmetry
    _save_oriented(tmp_path / 'six.png', raw, 6)
    upright = load_image(tmp_path / 'six.png')
    np.testing.assert_array_equal(upright, np.rot90(raw, k=-1))  # 6 rows, 4 columns, turned clockwise
    for orientation in range(1, 9):
        path = tmp_path / f'o{orientation}.png'
        _save_oriented(path, raw, orientation)
        with Image.open(path) as image:
            want = np.asarray(ImageOps.exif_transpose(image).convert('RGB'))
        np.testing.assert_array_equal(load_image(path), want, err_msg=f'orientation {orientation}')
    # a JPEG (the usual case) and a 16-bit PNG: the orientation and to_rgb's 16-bit scaling both apply
    big = np.kron(raw, np.ones((8, 8, 1), np.uint8))
    _save_oriented(tmp_path / 'six.jpg', big, 6, quality=100, subsampling=0)
    photo = load_image(tmp_path / 'six.jpg')
    assert photo.shape == (48, 32, 3)
    assert np.abs(photo.astype(int) - np.rot90(big, k=-1)).mean() < 2
    ramp = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    _save_oriented(tmp_path / 'eight.png', ramp, 8)  # 8: turn 90 degrees anticlockwise
    grey = load_image(tmp_path / 'eight.png')
    assert grey.shape == (4, 3, 3)
    np.testing.assert_array_equal(grey[..., 0], np.rint(np.rot90(ramp, k=1) / 257.0).astype(np.uint8))
    # the readers of the tasks get the upright image too (classification here; all of them call load_image)
    from visionattn.heads.classification.data import ImageFolderDataset
    (tmp_path / 'cls' / 'a').mkdir(parents=True)
    _save_oriented(tmp_path / 'cls' / 'a' / 'six.png', raw, 6)
    np.testing.assert_array_equal(ImageFolderDataset(str(tmp_path / 'cls'))._load(0)[0], np.rot90(raw, k=-1))


def test_seed_and_epoch_must_be_non_negative_integers():
    # numpy's SeedSequence takes only non-negative ints: a bad seed used to fail later, in a worker, as "expected
    # non-negative integer" without naming the argument (or never, for a pipeline without set_random_seed).
    from visionattn.data import SeededDataset
    for seed in (-1, None, 1.5):
        with pytest.raises(ValueError, match='seed must be a non-negative integer'):
            SeededDataset(seed=seed)
    dataset = SeededDataset(seed=3)
    with pytest.raises(ValueError, match='epoch must be a non-negative integer'):
        dataset.set_epoch(-1)


def test_transforms_refuse_bad_sizes_crop_pct_and_statistics():
    from visionattn.data import TimmTransforms
    with pytest.raises(ValueError, match='img_size'):
        classification_transforms(True, 0)
    with pytest.raises(ValueError, match='crop_pct'):  # was a ZeroDivisionError
        classification_transforms(False, 32, crop_pct=0)
    with pytest.raises(ValueError, match='crop_pct'):  # was an albumentations CropSizeError at the first image
        classification_transforms(False, 32, crop_pct=-1)
    with pytest.raises(ValueError, match='img_size'):  # was accepted; failed at the first image
        TimmTransforms(True, 0)
    with pytest.raises(ValueError, match='crop_pct'):  # timm reads 0 as "the default 0.875", silently
        TimmTransforms(False, 32, crop_pct=0)
    with pytest.raises(ValueError, match='multi_scale size'):
        TimmTransforms(True, 32, multi_scale=(0, 2))
    with pytest.raises(ValueError, match='mean must hold 3'):  # 4 fill values were accepted silently
        TimmTransforms(True, 32, auto_augment='rand-m9-mstd0.5', mean=(0.5, 0.5, 0.5, 0.5))


def test_digits_dataset_checks_max_samples_test_fraction_and_negative_indices():
    # max_samples=-1 kept "all but the last" image and 0 an empty split, silently; test_fraction 0 failed in
    # scikit-learn naming its test_size; dataset[-1] wrapped round and its item carried index -1.
    for kwargs, message in ((dict(max_samples=-1), 'max_samples must be a positive whole number'),
                            (dict(max_samples=0), 'max_samples must be a positive whole number'),
                            (dict(test_fraction=0), r'test_fraction must be a fraction in \(0, 1\)'),
                            (dict(test_fraction=1.5), r'test_fraction must be a fraction in \(0, 1\)')):
        with pytest.raises(ValueError, match=message):
            DigitsDataset('test', **kwargs)
    dataset = DigitsDataset('test', max_samples=3)
    assert len(dataset) == 3 and dataset[2]['index'] == 2
    with pytest.raises(IndexError, match='index -1 out of range for 3 items'):
        dataset[-1]
