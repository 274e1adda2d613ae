"""The base of every task model (mmengine's BaseModel with the initialisation rule the zoo needs) and of the dense
tasks' data preprocessors."""
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmengine.dist import all_reduce, get_world_size, is_distributed
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.structures import BaseDataElement

__all__ = ['TaskModel', 'NormalizePadPreprocessor', 'check_pixel_scale', 'parse_total_loss', 'batch_canvas', 'pad_to']


def batch_canvas(batch: Sequence[Dict], task: str) -> Tuple[int, int]:
    """The (H, W) a dense task's collate pads its items' ``img`` [C, H, W] to: the largest of the batch."""
    if not batch:
        raise ValueError(f'{task} collate got an empty batch')
    for item in batch:
        if item['img'].ndim != 3:
            raise ValueError(f'{task} items need img of shape [C, H, W], got {tuple(item["img"].shape)}')
    return max(int(item['img'].shape[-2]) for item in batch), max(int(item['img'].shape[-1]) for item in batch)


def pad_to(tensor: torch.Tensor, height: int, width: int, value: float = 0) -> torch.Tensor:
    """Pad the last two dims at the bottom/right up to (height, width) with ``value``."""
    h, w = tensor.shape[-2:]
    if (h, w) == (height, width):
        return tensor
    return F.pad(tensor, (0, width - w, 0, height - h), value=value)


def parse_total_loss(losses: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """A task model's ``parse_losses`` when its loss dict carries the total as ``'loss'`` beside the weighted parts:
    only ``'loss'`` is back-propagated (the parts are logged, not added again, whatever their names), and every
    logged value is averaged over processes, so a log line reports the loss of the global batch."""
    if 'loss' not in losses:
        raise KeyError(f"the loss dict needs a 'loss' entry, got {sorted(losses)}")
    log_vars = {}
    for key, value in losses.items():
        value = value.detach().float().mean().clone()
        if is_distributed():
            all_reduce(value)
            value = value / get_world_size()
        log_vars[key] = value
    return losses['loss'].mean(), log_vars


def _is_empty_batch(inputs) -> bool:
    if torch.is_tensor(inputs):
        return inputs.dim() > 0 and inputs.shape[0] == 0
    return isinstance(inputs, (list, tuple)) and len(inputs) == 0


MODES = ('loss', 'predict', 'tensor')


def _empty_batch_rule(forward):
    """Wrap a task model's ``forward(inputs, data_samples, mode)`` with the one rule for a batch of no image."""

    @functools.wraps(forward)
    def guarded(self, inputs, data_samples=None, mode: str = 'tensor', *args, **kwargs):
        if mode not in MODES or not _is_empty_batch(inputs):  # an unknown mode is named by forward itself
            return forward(self, inputs, data_samples, mode, *args, **kwargs)
        name = type(self).__name__
        if mode == 'predict':
            return list(data_samples or [])
        if mode == 'loss':
            raise ValueError(f"{name}: mode='loss' got an empty batch (0 images): there is no loss to take (a mean "
                             'over no sample is NaN); leave empty batches out before the model')
        try:
            return forward(self, inputs, data_samples, mode, *args, **kwargs)
        except Exception as error:  # noqa: BLE001  (re-raised, naming the cause)
            raise ValueError(f"{name}: mode={mode!r} got an empty batch (0 images), which this task's networks "
                             f'cannot take ({type(error).__name__}: {error})') from error
    return guarded


class TaskModel(BaseModel):
    """A task model whose networks initialise themselves (and load pretrained weights) when they are built.

    mmengine's runner calls ``init_weights()`` on the model before training; BaseModel's version walks the children
    and calls each one's ``init_weights``, which for timm's ResNet re-draws every weight and silently wipes a
    ``pretrained=True`` backbone. Only an explicit ``init_cfg`` is applied here.

    ``forward(inputs, data_samples, mode)`` dispatches here once for every task: ``mode='loss'`` to
    ``loss(inputs, data_samples, **kwargs)``, ``'predict'`` to ``predict(...)`` and ``'tensor'`` to ``_forward(...)``
    (the networks' raw outputs), the keyword arguments being those ``mode_kwargs`` makes of forward's own.

    A batch of no image gets one rule in every task (this ``forward`` and any subclass's own are wrapped):
    ``mode='predict'`` returns no prediction (the data samples given, that is none), ``mode='loss'`` raises a
    ValueError naming the empty batch (the mean of a loss over no sample is NaN), and ``mode='tensor'`` gives the
    networks' empty outputs or a ValueError naming the empty batch where the networks cannot take one.
    """

    show_hook = None  # the Hook class that draws this task's predictions for ``tools/test.py --show-dir``

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if 'forward' in cls.__dict__:
            cls.forward = _empty_batch_rule(cls.__dict__['forward'])

    @_empty_batch_rule
    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor', **kwargs):
        if mode not in MODES:
            raise ValueError(f'{type(self).__name__}: unknown mode={mode!r}; the modes are '
                             f"{', '.join(map(repr, MODES))}")
        method = {'loss': self.loss, 'predict': self.predict, 'tensor': self._forward}[mode]
        return method(inputs, data_samples, **self.mode_kwargs(inputs, data_samples, **kwargs))

    def mode_kwargs(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]], **kwargs) -> Dict:
        """The keyword arguments ``forward`` passes to the mode's method, from its own extra ones (checked and
        completed by a task that takes some; none by default)."""
        if kwargs:
            raise TypeError(f'{type(self).__name__}.forward() got unexpected keyword arguments {sorted(kwargs)}')
        return {}

    def loss(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> Dict:
        """The loss terms of a batch (``mode='loss'``)."""
        raise NotImplementedError(f"{type(self).__name__} has no mode='loss'")

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> List:
        """The data samples with the predictions set (``mode='predict'``)."""
        raise NotImplementedError(f"{type(self).__name__} has no mode='predict'")

    def _forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None):
        """The networks' raw outputs (``mode='tensor'``)."""
        raise NotImplementedError(f"{type(self).__name__} has no mode='tensor'")

    def init_weights(self) -> None:
        if self.init_cfg:
            super().init_weights()


def check_pixel_scale(inputs, who: str) -> None:
    """Raise ValueError for floating-point images on the 0..1 scale (``ToTensor``'s): the preprocessors normalise
    0..255 images (uint8, as the pipelines give them) with ``mean * 255`` and ``std * 255``, so a [0, 1] image came
    out as a near-constant map of about -2 without a word. Floats on the 0..255 scale pass, and so does an all-zero
    image (the same on both scales). Only floating-point inputs are inspected (a device sync for those alone)."""
    for images in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        if isinstance(images, torch.Tensor) and images.is_floating_point() and images.numel():
            peak = float(images.detach().abs().amax())
            if 0.0 < peak <= 1.0:
                raise ValueError(f'{who}: the input images are floats on the 0..1 scale (largest |value| {peak:.3g}); '
                                 f'this preprocessor normalises 0..255 images (mean and std are multiplied by 255): '
                                 f'pass uint8 images, or multiply these by 255')


class NormalizePadPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the device, repeats grey images to RGB, normalises, and pads to a size divisor (bottom/right,
    0 after normalising); each sample's metainfo gets 'pad_shape'. Subclasses pad their targets in ``pad_samples``.

    Args:
        mean: Per-channel mean on the 0..1 scale (timm's ``pretrained_cfg['mean']``).
        std: Per-channel std on the 0..1 scale.
        size_divisor: Pad H and W up to a multiple of this; None leaves the batch's size alone.
        repeat_gray: Repeat 1-channel inputs to 3 channels when ``mean`` has three entries.
    """

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 size_divisor: Optional[int] = None, repeat_gray: bool = True):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f'mean and std need the same length, got {len(mean)} and {len(std)}')
        if size_divisor is not None and size_divisor < 1:
            raise ValueError(f'size_divisor must be positive or None, got {size_divisor}')
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255, persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255, persistent=False)
        self.size_divisor = size_divisor
        self.repeat_gray = repeat_gray

    def pad_samples(self, samples: List[BaseDataElement], size: Sequence[int], pad: Sequence[int]) -> None:
        """Pad the samples' targets of the unpadded batch ``size`` (h, w) by ``pad`` (bottom, right)."""

    def forward(self, data: Dict, training: bool = False) -> Dict:
        check_pixel_scale(data.get('inputs'), type(self).__name__)  # before the move: on the host for loader batches
        data = self.cast_data(data)
        inputs = data['inputs']
        if inputs.ndim != 4:
            raise ValueError(f'{type(self).__name__} expects inputs [B, C, H, W], got {tuple(inputs.shape)}')
        if inputs.shape[1] == 1 and self.repeat_gray and self.mean.shape[0] == 3:
            inputs = inputs.expand(-1, 3, -1, -1)
        if inputs.shape[1] != self.mean.shape[0]:
            raise ValueError(f'inputs have {inputs.shape[1]} channels, mean/std have {self.mean.shape[0]}')
        inputs = (inputs.float() - self.mean) / self.std
        samples = data.get('data_samples')
        if self.size_divisor:
            h, w = inputs.shape[-2:]
            pad_h, pad_w = -h % self.size_divisor, -w % self.size_divisor
            if pad_h or pad_w:
                inputs = F.pad(inputs, (0, pad_w, 0, pad_h), value=0)
                self.pad_samples(samples or [], (h, w), (pad_h, pad_w))
        for sample in samples or ():
            sample.set_metainfo({'pad_shape': tuple(inputs.shape[-2:])})
        return {'inputs': inputs.contiguous(), 'data_samples': samples}
