"""Bi-level routing attention (BRA), the token mixer of BiFormer.

Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention", CVPR 2023, arXiv:2303.08810.
Official code: github.com/rayleizhu/BiFormer (MIT), ``ops/bra_legacy.py``. This is a fresh implementation of the
configuration every released BiFormer uses (``kv_downsample_mode='identity'``, ``param_attention='qkvo'``,
non-parametric hard routing without routing weights), computing what the official module computes:

1. the NHWC map is cut into ``n_win`` x ``n_win`` regions (zero-padded at the bottom/right first when its size is
   not a multiple of ``n_win``, as the official ``auto_pad`` used for detection and segmentation does);
2. one linear layer gives q, k (``qk_dim`` channels each) and v (``dim`` channels);
3. each region is routed to its ``topk`` regions by region-mean q·k, and per-head attention runs over their tokens,
   with the logit scale ``qk_dim ** -0.5`` (the full qk dim, not the head dim: the official quirk, kept because the
   released weights were trained with it);
4. the local context enhancement (LCE, ``lepe``), a depthwise conv on v in its spatial layout, is added;
5. the output projection ``wo``; padding, if any, is cropped away.

Steps 1-4 are one op, :func:`visionattn.ops.block_sparse.bi_level_routing_attention_2d`, fed the qkv projection's
output as it comes (NHWC, the map's own token order, not region-major): on the GPU its kernels read the regions, q,
k and v in place and fold the LCE conv into the attention, so between the two projections nothing is copied.

Parameter names are the official ones (``qkv.qkv``, ``lepe``, ``wo``), so official checkpoints load unrenamed.
"""
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.ops.block_sparse import bi_level_routing_attention_2d
from visionattn.ops.checks import positive_int

__all__ = ['BiLevelRoutingAttention', 'pad_to_regions']


def _check_input(x: torch.Tensor, dim: int, n_win: int, auto_pad: bool) -> None:
    if x.dim() != 4 or x.shape[-1] != dim:
        raise ValueError(f'BiLevelRoutingAttention expects an NHWC map [B, H, W, {dim}], got {list(x.shape)}')
    if x.shape[1] < 1 or x.shape[2] < 1:
        raise ValueError(f'BiLevelRoutingAttention got an empty map {list(x.shape)}')
    if not auto_pad and (x.shape[1] % n_win or x.shape[2] % n_win):
        raise ValueError(f'the map is {x.shape[1]}x{x.shape[2]}, not divisible by n_win={n_win} regions per side; '
                         f'use auto_pad=True to pad it')


def pad_to_regions(x: torch.Tensor, n_win: int) -> torch.Tensor:
    """Zero-pad an NHWC map at the bottom and right to multiples of ``n_win`` (official ``auto_pad``)."""
    pad_h, pad_w = -x.shape[1] % n_win, -x.shape[2] % n_win
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def _crop(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Crop a padded NHWC map back to ``like``'s height and width."""
    if x.shape[1] == like.shape[1] and x.shape[2] == like.shape[2]:
        return x
    return x[:, :like.shape[1], :like.shape[2]].contiguous()


# The padding and the op (its checks and backend choice) depend on the input at run time:
# torch.fx keeps them as opaque calls, so a traced model still takes any input size.
torch.fx.wrap('_check_input')
torch.fx.wrap('pad_to_regions')
torch.fx.wrap('_crop')
torch.fx.wrap('bi_level_routing_attention_2d')


class _QKVLinear(nn.Module):
    """The joint q/k/v projection; nested so that its weight is ``qkv.qkv.weight``, the official name."""

    def __init__(self, dim: int, qk_dim: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)


class BiLevelRoutingAttention(nn.Module):
    """BiFormer's bi-level routing attention on NHWC maps.

    Args:
        dim: Channels of the input, of v and of the output.
        num_heads: Attention heads; must divide ``qk_dim`` and ``dim``.
        n_win: Regions per side; the map is cut into ``n_win`` x ``n_win`` regions.
        topk: Regions each region attends to, at most ``n_win ** 2``.
        qk_dim: Channels of q and k (default ``dim``).
        qk_scale: Logit scale (default ``qk_dim ** -0.5``, the official choice; see the module docstring).
        side_dwconv: Kernel of the depthwise LCE conv on v (odd); 0 disables it.
        auto_pad: Zero-pad maps whose size is not a multiple of ``n_win`` (bottom/right), attend, then crop, as the
            official dense-prediction backbones do; the padded tokens take part in routing and attention exactly
            as there. False raises on such maps, as the official classification models do.
        backend: Backend of the attention op: None (automatic), 'reference' or 'triton'.
        device: Device for the parameters.
        dtype: Data type for the parameters.

    Attributes:
        keep_routing: When True, every forward stores its routing in ``last_routing``: an int64
            [B, n_win², topk] tensor of the regions each region attends to, regions numbered row by row over the
            (padded) map, each ``ceil(H / n_win)`` x ``ceil(W / n_win)`` pixels. For attention-map plots; leave
            it False for tracing (the stored tensor is not part of a traced graph).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            n_win: int = 7,
            topk: int = 4,
            qk_dim: Optional[int] = None,
            qk_scale: Optional[float] = None,
            side_dwconv: int = 5,
            auto_pad: bool = True,
            backend: Optional[str] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # floats failed in torch.empty (a TypeError naming no argument); NumPy integers are the counts they hold
        op = 'BiLevelRoutingAttention'
        dim, num_heads = positive_int(op, 'dim', dim), positive_int(op, 'num_heads', num_heads)
        qk_dim = dim if qk_dim is None else positive_int(op, 'qk_dim', qk_dim)
        if isinstance(side_dwconv, bool) or not isinstance(side_dwconv, numbers.Integral):
            raise ValueError(f'{op}: side_dwconv={side_dwconv!r} must be an int (an odd kernel size, or 0)')
        side_dwconv = int(side_dwconv)
        if qk_dim % num_heads or dim % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide qk_dim={qk_dim} and dim={dim}')
        if isinstance(n_win, bool) or not isinstance(n_win, numbers.Integral) or n_win < 1:
            raise ValueError(f'n_win must be a positive number of regions per side, got {n_win!r}')
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or not 1 <= topk <= n_win * n_win:
            raise ValueError(f'topk={topk!r} must lie in [1, n_win**2 = {n_win * n_win}]')
        n_win, topk = int(n_win), int(topk)
        self.dim, self.qk_dim, self.num_heads, self.n_win, self.topk = dim, qk_dim, num_heads, n_win, topk
        self.scale = qk_scale or qk_dim ** -0.5
        self.auto_pad = auto_pad
        self.backend = backend
        self.keep_routing = False
        self.last_routing: Optional[torch.Tensor] = None

        if side_dwconv > 0 and side_dwconv % 2 == 0:
            raise ValueError(f'side_dwconv={side_dwconv} must be odd (a "same" conv with padding k // 2), or 0')
        self.qkv = _QKVLinear(dim, qk_dim, **dd)
        # applied by the attention op (the module's own forward is not called): the Triton kernels fold it in
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd) \
            if side_dwconv > 0 else None
        self.wo = nn.Linear(dim, dim, **dd)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, n_win={self.n_win}, '
                f'topk={self.topk}, auto_pad={self.auto_pad}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, dim] -> [B, H, W, dim]."""
        _check_input(x, self.dim, self.n_win, self.auto_pad)
        padded = pad_to_regions(x, self.n_win)
        qkv = self.qkv(padded)  # [B, H, W, 2 * qk_dim + dim] in the map's own token order: no region copy
        lepe = self.lepe
        lepe_weight, lepe_bias = (None, None) if lepe is None else (lepe.weight, lepe.bias)
        if self.keep_routing:
            out, self.last_routing = bi_level_routing_attention_2d(
                qkv, self.num_heads, self.n_win, self.topk, self.qk_dim, self.scale, lepe_weight, lepe_bias,
                backend=self.backend, return_routing=True)
        else:
            out = bi_level_routing_attention_2d(qkv, self.num_heads, self.n_win, self.topk, self.qk_dim, self.scale,
                                                lepe_weight, lepe_bias, backend=self.backend)
        return _crop(self.wo(out), x)
