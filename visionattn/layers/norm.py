"""LayerNorm of token-major maps on visionattn's LayerNorm op (Triton on CUDA, PyTorch's elsewhere)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.layer_norm import layer_norm

__all__ = ['LayerNorm']


@torch.jit.ignore
def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` (same arguments, parameters and results) on visionattn's LayerNorm op: large no-grad
    CUDA calls (inference on big maps) run a Triton kernel that normalises many narrow rows per program, where
    PyTorch's gives each row a thread block and is slow at the 64-512 channels of the attention backbones' blocks;
    other calls (training, small maps) run PyTorch's op, which costs less host time (``ops/layer_norm.py`` says
    what was measured). TorchScript, ``torch.fx`` and ``torch.compile`` see PyTorch's own op (Inductor then fuses
    it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return _layer_norm(x, self)
