"""Parameter and multiply-add counts of zoo models, measured without computing anything.

Models are built on the ``meta`` device: shapes propagate, no memory is allocated and no arithmetic runs, so
counting the largest variant takes about a second. ``torch.utils.flop_counter`` counts 2 FLOPs per
multiply-add over convolutions, matmuls and attention; GMACs here are its total / 2, the quantity papers
print as "FLOPs". Element-wise work (norms, activations, pooling) is not counted, as in fvcore.
"""
from dataclasses import dataclass
from typing import Optional, Sequence

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['Measurement', 'measure']


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
    """Count parameters and multiply-adds of ``model_name`` at ``input_size`` (C, H, W; default: its cfg's)."""
    model = timm.create_model(model_name, device='meta', **kwargs).eval()
    input_size = tuple(input_size or model.pretrained_cfg['input_size'])
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty((1, *input_size), device='meta'))
    return Measurement(params=params, macs=counter.get_total_flops() // 2, input_size=input_size)
