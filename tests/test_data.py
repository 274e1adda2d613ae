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
