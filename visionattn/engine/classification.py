"""What the engine shares with the image classifier (visionattn.heads.classification.task) and the tasks built on it:
the uint8-to-normalised data preprocessor (re-identification's derives from it) and the check of a timm model name
that the runner applies to every config's ``model.backbone``."""
import difflib
from typing import Dict, Optional, Sequence

import timm
import torch
from mmengine.model import BaseDataPreprocessor
from timm.data.random_erasing import RandomErasing

from .base import check_pixel_scale
from .registry import MODELS

__all__ = ['ClsDataPreprocessor', 'check_model_name']


@MODELS.register_module()
class ClsDataPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the device and normalises uint8 images with the model's mean/std (0..1 scale); in training,
    optionally applies timm's random erasing to the normalised images, as timm's ``PrefetchLoader`` does.

    Args:
        mean: Per-channel mean on the 0..1 scale (timm's ``pretrained_cfg['mean']``).
        std: Per-channel std on the 0..1 scale.
        random_erasing: Arguments of ``timm.data.RandomErasing`` (``probability``, ``mode``, ``max_count``, ...), e.g.
            ``dict(probability=0.25, mode='pixel', max_count=1)`` for timm's ``--reprob 0.25 --remode pixel
            --recount 1``; None for none. Applied only to training batches, before Mixup/CutMix.
    """

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 random_erasing: Optional[Dict] = None):
        super().__init__()
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != len(std) or not all(0.0 <= m <= 1.0 for m in mean) or not all(0.0 < s <= 1.0 for s in std):
            raise ValueError(f'ClsDataPreprocessor mean and std are per-channel values on the 0..1 scale (timm\'s '
                             f'pretrained_cfg), mean in [0, 1] and std in (0, 1], as many of each; got mean={mean}, '
                             f'std={std} (0..255 values, as mmpretrain writes them, are to be divided by 255)')
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255, persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255, persistent=False)
        self.random_erasing = RandomErasing(**random_erasing, device='cpu') if random_erasing else None

    def forward(self, data: Dict, training: bool = False) -> Dict:
        check_pixel_scale(data.get('inputs'), type(self).__name__)  # before the move: on the host for loader batches
        data = self.cast_data(data)
        inputs = (data['inputs'].float() - self.mean) / self.std
        if training and self.random_erasing is not None:
            self.random_erasing.device = inputs.device  # where its noise is drawn
            inputs = self.random_erasing(inputs)
        return {'inputs': inputs.contiguous(memory_format=torch.channels_last), 'data_samples': data['data_samples']}


def check_model_name(name: str) -> None:
    """Fail with the nearest names when ``name`` is not a registered timm or zoo model."""
    if not timm.is_model(name.split('.')[0]):
        import visionattn  # noqa: F401  (registers the zoo, in case the config was built before importing it)
        if timm.is_model(name.split('.')[0]):
            return
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'model.backbone={name!r} is not a registered timm or visionattn model{hint}')
