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
    gate_h = gate_fn(x.mean(dim=3)).unsqueeze(3).to(x.dtype)  # B, C, H, 1
    gate_w = gate_fn(x.mean(dim=2)).unsqueeze(2).to(x.dtype)  # B, C, 1, W
    return x * gate_h * gate_w
