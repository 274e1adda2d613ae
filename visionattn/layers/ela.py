"""Efficient Local Attention (ELA).

Xu & Wan, "ELA: Efficient Local Attention for Deep Convolutional Neural Networks", arXiv:2403.01123.
Official code: github.com/Xuwei86/ELA_Code (no licence file). This is a fresh implementation of the module
as the authors' ``attention.py`` files compute it: strip pooling along each axis, one Conv1d and one
GroupNorm shared by both axes, sigmoid, and no channel reduction.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..ops.checks import positive_int
from ..ops.strip_gate import strip_gate

__all__ = ['EfficientLocalAttention', 'ElaVersion', 'ELA_VERSIONS']


@dataclass(frozen=True)
class ElaVersion:
    """The three hyper-parameters the paper varies between its T/B/S/L versions."""
    kernel_size: int
    conv_group_size: Optional[int]  # channels per Conv1d group; None = depthwise (groups = C)
    norm_groups: int


# Paper §3 versions, as in the authors' task code: T and B are depthwise, S and L group 8 channels per conv group.
ELA_VERSIONS = {
    'T': ElaVersion(kernel_size=5, conv_group_size=None, norm_groups=32),
    'B': ElaVersion(kernel_size=7, conv_group_size=None, norm_groups=16),
    'S': ElaVersion(kernel_size=5, conv_group_size=8, norm_groups=16),
    'L': ElaVersion(kernel_size=7, conv_group_size=8, norm_groups=16),
}


class EfficientLocalAttention(nn.Module):
    """Multiplies a feature map by a sigmoid gate along H and one along W, each from a 1-D strip pooling.

    Args:
        channels: Input (and output) channels.
        version: One of 'T', 'B', 'S', 'L' (paper §3); 'B' is the default.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, channels: int, version: str = 'B', device=None, dtype=None):
        super().__init__()
        if version not in ELA_VERSIONS:
            raise ValueError(f'unknown ELA version {version!r}; choose one of {sorted(ELA_VERSIONS)}')
        cfg = ELA_VERSIONS[version]
        channels = positive_int(f'ELA-{version}', 'channels', channels)  # a float failed in torch.empty
        groups = channels if cfg.conv_group_size is None else channels // cfg.conv_group_size
        if groups < 1 or channels % groups or channels % cfg.norm_groups:
            raise ValueError(
                f'ELA-{version} needs channels divisible by its conv groups ({cfg.conv_group_size or 1} per group) '
                f'and by {cfg.norm_groups} GroupNorm groups; got {channels} channels')
        self.version = version
        self.conv = nn.Conv1d(
            channels, channels, cfg.kernel_size, padding=cfg.kernel_size // 2, groups=groups, bias=False,
            device=device, dtype=dtype)
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, device=device, dtype=dtype)

    def _gate(self, strip: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.norm(self.conv(strip)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same conv and norm serve both axes (paper Fig. 3), so one weight sees rows and columns alike.
        if torch.jit.is_scripting():  # ops/reference/strip_gate.py's expression (a callable argument does not script)
            gate_h = self._gate(x.mean(dim=3)).unsqueeze(3).to(x.dtype)  # B, C, H, 1
            gate_w = self._gate(x.mean(dim=2)).unsqueeze(2).to(x.dtype)  # B, C, 1, W
            return x * gate_h * gate_w
        return _strip_gate(x, self)


@torch.jit.ignore
def _strip_gate(x: torch.Tensor, layer: EfficientLocalAttention) -> torch.Tensor:
    # On CUDA: Triton kernels for the strip means and the gated product (one pass each way, issue 27).
    return strip_gate(x, layer._gate, tuple(layer.parameters()))
