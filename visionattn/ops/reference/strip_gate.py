"""The strip gate in PyTorch ops: the oracle of the Triton kernels and the path on the CPU, under ``torch.compile``
(where Inductor fuses it), ``torch.fx`` and TorchScript."""
from typing import Callable

import torch

__all__ = ['strip_gate_ref']


def strip_gate_ref(x: torch.Tensor, gate_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x * gate_fn(mean over W)[..., None] * gate_fn(mean over H)[..., None, :]`` for ``x`` [B, C, H, W].

    Under CUDA autocast a gate may come back in float32 (GroupNorm's policy); it is cast to ``x``'s dtype, so that
    the product, and the residual stream after it, keeps ``x``'s dtype instead of doubling its bytes.
    """
    strips = x.mean(dim=3), x.mean(dim=2)  # B, C, H and B, C, W
    gate_h, gate_w = (gate_fn(strip) for strip in strips)
    if not isinstance(x, torch.fx.Proxy):  # a gate of another shape would broadcast into a wrong product
        for strip, gate in zip(strips, (gate_h, gate_w)):
            if gate.shape != strip.shape:
                raise ValueError(f'strip_gate: gate_fn must keep the strip shape {tuple(strip.shape)}, '
                                 f'got {tuple(gate.shape)}')
    return x * gate_h.unsqueeze(3).to(x.dtype) * gate_w.unsqueeze(2).to(x.dtype)
