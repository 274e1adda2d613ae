"""2-D neighborhood attention as an nn.Module: qkv projection, NA with relative positional bias, output projection.

Hassani et al., "Neighborhood Attention Transformer" (CVPR 2023, arXiv:2204.07143) and Hassani & Shi, "Dilated
Neighborhood Attention Transformer" (arXiv:2209.15001). Official code: github.com/SHI-Labs/Neighborhood-Attention-
Transformer (MIT), whose blocks use NATTEN's ``NeighborhoodAttention2D`` (github.com/SHI-Labs/NATTEN, MIT). This is a
fresh implementation on :func:`visionattn.ops.neighborhood.neighborhood_attention`; its parameters carry NATTEN's
names and shapes (``qkv``, ``rpb`` [heads, 2k-1, 2k-1], ``proj``), so official checkpoints load without renaming.

Inputs smaller than the attention window (``kernel_size * dilation`` on an axis) are padded, as NATTEN's module did
in the versions the official detection/segmentation code ran on (natten 0.14, ``natten2d.py``): zeros are appended
at the bottom/right of the *input* of ``qkv``, attention runs on the padded map (the padded tokens are real keys
whose q/k/v equal the qkv bias) and the output is cropped back. The official backbones leave dilation unchanged.
Here the padding is applied after ``qkv`` with the bias values, which gives the same numbers without projecting
the padding. NATTEN >= 0.17 raises an error instead.
"""
from typing import Optional

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from ..ops.checks import positive_int
from ..ops.neighborhood import neighborhood_attention

__all__ = ['NeighborhoodAttention2d', 'pad_qkv_to_window']


@torch.jit.ignore
def _check_input(x: torch.Tensor, dim: int) -> torch.Tensor:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f'NeighborhoodAttention2d expects channels-last input [batch, height, width, {dim}], got '
                         f'shape {tuple(x.shape)}')
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f'NeighborhoodAttention2d got an empty feature map, shape {tuple(x.shape)}')
    return x


@torch.jit.ignore
def _padded_neighborhood_attention(
        qkv: torch.Tensor,
        qkv_bias: Optional[torch.Tensor],
        rpb: Optional[torch.Tensor],
        num_heads: int,
        kernel_size: int,
        dilation: int,
        scale: float,
) -> torch.Tensor:
    """NA of a fused ``qkv`` projection [B, H, W, 3C], padded up to the window as NATTEN 0.14 did; returns [B, H, W, C].

    The pad rows/columns hold what ``qkv`` gives for a zero input, i.e. its bias (zeros without bias).
    """
    height, width = qkv.shape[1:3]
    qkv = pad_qkv_to_window(qkv, qkv_bias, kernel_size * dilation)
    head_dim = qkv.shape[-1] // (3 * num_heads)
    q, k, v = qkv.unflatten(-1, (3, num_heads, head_dim)).unbind(3)
    out = neighborhood_attention(q, k, v, kernel_size, dilation=dilation, rpb=rpb, scale=scale)
    out = out.flatten(-2)
    if out.shape[1:3] != (height, width):
        out = out[:, :height, :width]
    return out


def pad_qkv_to_window(qkv: torch.Tensor, qkv_bias: Optional[torch.Tensor], window: int) -> torch.Tensor:
    """A fused ``qkv`` projection [B, H, W, 3C] padded at the bottom/right up to ``window`` (kernel x dilation) per
    axis, as NATTEN 0.14's module padded its input: the pad tokens hold what ``qkv`` gives a zero input, its bias
    (zeros without bias). Unchanged when the map is large enough."""
    batch, height, width, channels3 = qkv.shape
    pad_h, pad_w = max(0, window - height), max(0, window - width)
    if pad_h or pad_w:
        fill = qkv_bias.to(qkv.dtype) if qkv_bias is not None else qkv.new_zeros(channels3)
        if pad_w:
            qkv = torch.cat([qkv, fill.expand(batch, height, pad_w, channels3)], dim=2)
        if pad_h:
            qkv = torch.cat([qkv, fill.expand(batch, pad_h, width + pad_w, channels3)], dim=1)
    return qkv


# Leaves of torch.fx graphs (the padding depends on the input size, the op chooses its backend at run time) that
# TorchScript calls back into Python (``torch.jit.ignore``): so FX tracing then ``torch.jit.script`` of the traced graph
# works, as timm's tests do it. Neither changes eager or torch.compile behaviour (Dynamo traces through both).
torch.fx.wrap('_check_input')
torch.fx.wrap('_padded_neighborhood_attention')


class NeighborhoodAttention2d(nn.Module):
    """Multi-head 2-D neighborhood attention on channels-last maps [B, H, W, C] (NATTEN's ``NeighborhoodAttention2D``).

    Each query attends to the ``kernel_size x kernel_size`` keys around it (windows clamped at the borders, every
    ``dilation``-th token), with a learned relative positional bias per head:
    ``softmax(q k^T * scale + rpb) v``, then the output projection.

    Args:
        dim: Channels of the input and output.
        num_heads: Attention heads; must divide ``dim``.
        kernel_size: Neighborhood size per axis (>= 2; the NAT models use 7).
        dilation: Dilation per axis (DiNAT's dilated NA when > 1).
        qkv_bias: Bias in the qkv projection.
        qk_scale: Scale of the logits; default ``head_dim ** -0.5``.
        rel_pos_bias: Learn a relative positional bias ``rpb`` [num_heads, 2k-1, 2k-1].
        attn_drop: Dropout on attention probabilities. Only 0 is supported: the op never forms the probabilities
            (as NATTEN's fused kernels, which ignore this argument); the official NAT/DiNAT models train with 0.
        proj_drop: Dropout after the output projection.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            kernel_size: int = 7,
            dilation: int = 1,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            rel_pos_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # a float count passed the divisibility test and failed in torch.zeros (a TypeError naming no argument)
        dim, num_heads = (positive_int('NeighborhoodAttention2d', name, value)
                          for name, value in (('dim', dim), ('num_heads', num_heads)))
        if dim % num_heads:
            raise ValueError(f'NeighborhoodAttention2d: dim {dim} is not divisible by num_heads {num_heads}')
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 2:
            raise ValueError(f'NeighborhoodAttention2d: kernel_size must be an int >= 2, got {kernel_size!r}')
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
            raise ValueError(f'NeighborhoodAttention2d: dilation must be an int >= 1, got {dilation!r}')
        if attn_drop:
            raise ValueError(f'NeighborhoodAttention2d: attn_drop={attn_drop} is not supported (the neighborhood '
                             'attention op does not form attention probabilities); use 0')
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.scale = float(qk_scale or self.head_dim ** -0.5)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1, **dd))
            trunc_normal_(self.rpb, std=.02, mean=0., a=-2., b=2.)  # NATTEN's init
        else:
            self.register_parameter('rpb', None)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C]; any H, W >= 1 (maps smaller than ``kernel_size * dilation`` are padded)."""
        x = _check_input(x, self.dim)
        x = _padded_neighborhood_attention(
            self.qkv(x), self.qkv.bias, self.rpb, self.num_heads, self.kernel_size, self.dilation, self.scale)
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'dilation={self.dilation}, rel_pos_bias={self.rpb is not None}')
