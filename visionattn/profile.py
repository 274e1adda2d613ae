"""Parameter and multiply-add counts of zoo models, measured without computing anything.

Models are built on the ``meta`` device: shapes propagate, no memory is allocated and no arithmetic runs, so
counting the largest variant takes about a second. ``torch.utils.flop_counter`` counts 2 FLOPs per
multiply-add over convolutions, matmuls and attention; GMACs here are its total / 2, the quantity papers
print as "FLOPs". Element-wise work (norms, activations, pooling) is not counted, as in fvcore.
"""
import operator
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['Measurement', 'MeasurementError', 'measure']


class MeasurementError(RuntimeError):
    """A model that could not be run on the ``meta`` device at the asked input size; the message names both."""


@dataclass(frozen=True)
class Measurement:
    params: int
    macs: int
    input_size: Sequence[int]

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9


def measure(model_name: str, input_size: Optional[Sequence[int]] = None, **kwargs) -> Measurement:
    """Count parameters and multiply-adds of ``model_name`` at ``input_size`` (C, H, W).

    Args:
        model_name: A timm model name, optionally with a pretrained tag.
        input_size: (channels, height, width) of one image; default: the pretrained cfg's, with the channels of an
            ``in_chans`` and the size of an ``img_size`` passed in ``kwargs`` (what the model was built for).
        **kwargs: Passed to ``timm.create_model``.

    Raises:
        ValueError: ``input_size`` is not three positive integers.
        MeasurementError: The model cannot run at that size (or on the meta device), naming the model and the size.
    """
    if input_size is not None:
        input_size = _check_input_size(input_size)
    model = timm.create_model(model_name, device='meta', **kwargs).eval()
    if input_size is None:
        # the cfg records the default model's input: a model built with other channels or another size takes those
        channels, *size = model.pretrained_cfg['input_size']
        img_size = kwargs.get('img_size')
        if img_size is not None:
            size = [img_size] * 2 if isinstance(img_size, int) else list(img_size)
        input_size = _check_input_size((kwargs.get('in_chans', channels), *size))
    params = sum(p.numel() for p in model.parameters())
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty((1, *input_size), device='meta'))
    except Exception as error:  # the model's own refusal (too small, wrong channels) or an op the meta device lacks
        raise MeasurementError(f'{model_name} could not be measured at input_size {"x".join(map(str, input_size))} '
                               f'on the meta device: {type(error).__name__}: {error}') from error
    return Measurement(params=params, macs=counter.get_total_flops() // 2, input_size=input_size)


def _check_input_size(input_size: Sequence[int]) -> Tuple[int, ...]:
    try:  # numpy and torch integers count (operator.index), floats and bools do not
        size = tuple(operator.index(s) for s in input_size if not isinstance(s, bool))
    except TypeError:
        size = ()
    if len(size) != 3 or len(size) != len(input_size) or min(size) < 1:
        raise ValueError(f'input_size must be three positive integers (channels, height, width), got {input_size!r}')
    return size
