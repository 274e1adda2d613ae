"""NATTEN 0.17's modules ``NeighborhoodAttention1D/2D/3D`` on visionattn's neighborhood-attention op.

Constructor arguments, attributes and parameter names follow NATTEN 0.17 (github.com/SHI-Labs/NATTEN, MIT):
``qkv``, ``rpb`` [heads, 2k-1 per axis] and ``proj``, so the state dicts of models built on NATTEN's modules (the
official NAT/DiNAT checkpoints among them) load unchanged. Also accepted, as keywords: ``bias`` (NATTEN 0.14/0.15's
name of ``rel_pos_bias``, which the official NAT code passes to releases without ``natten.context``),
``kernel_size_d``/``dilation_d`` (0.15's 3-D module), and ``embed_dim`` and ``stride`` (GNA) of NATTEN >= 0.20's
modules, so 0.20 code that passes its arguments by keyword (as NATTEN's documentation does) runs unchanged.

Inputs smaller than ``kernel_size * dilation`` on an axis are zero-padded at the end of that axis before ``qkv``
and cropped after attention, as NATTEN 0.14/0.15's modules did, under which the official detection and
segmentation code ran (NATTEN 0.17 raises an error instead).

``attn_drop``: NATTEN 0.17 dropped attention weights on its unfused path only. Here a module with ``attn_drop > 0``
runs the unfused computation while training (QK, softmax, dropout, AV, by gathering neighbours) and the fused op
otherwise; with ``attn_drop == 0`` it always runs the fused op.
"""
import math
import numbers
import warnings
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from ...ops.neighborhood import neighborhood_attention
from ...ops.reference import neighbor_table
from .functional import _autocast_off, _neighbor_logits, _neighbor_sum

__all__ = ['NeighborhoodAttention1D', 'NeighborhoodAttention2D', 'NeighborhoodAttention3D']

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]
_AXES = {1: 'length', 2: 'height, width', 3: 'depth, height, width'}


def _per_axis(owner: str, name: str, value, n_dim: int, kind: type, minimum: int = 0) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n_dim
    ok = len(values) == n_dim and all(
        isinstance(v, bool) if kind is bool else (isinstance(v, int) and not isinstance(v, bool) and v >= minimum)
        for v in values)
    if not ok:
        what = 'a bool' if kind is bool else f'an int >= {minimum}'
        raise ValueError(f'{owner}: {name}={value!r} must be {what} or a tuple of {n_dim} of them')
    return values


def _dim(owner: str, dim, embed_dim) -> int:
    """The channels, given as ``dim`` (NATTEN <= 0.17) or ``embed_dim`` (NATTEN >= 0.20), as a positive int."""
    if dim is not None and embed_dim is not None and dim != embed_dim:
        raise ValueError(f'{owner}: dim={dim!r} and embed_dim={embed_dim!r} disagree (embed_dim is NATTEN >= 0.20\'s '
                         'name of dim); pass one of them')
    value = dim if dim is not None else embed_dim
    if value is None:
        raise TypeError(f"{owner}: missing required argument 'dim' (NATTEN >= 0.20: 'embed_dim')")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'{owner}: {"dim" if dim is not None else "embed_dim"}={value!r} must be an int >= 1')
    return value


class _NeighborhoodAttention(nn.Module):
    """NATTEN 0.17's ``NeighborhoodAttention{1,2,3}D`` for ``na_dim`` spatial axes; channels-last [B, *spatial, C]."""

    na_dim = 0

    def __init__(
            self,
            dim: Optional[int] = None,
            num_heads: Optional[int] = None,
            kernel_size: Optional[IntOrTuple] = None,
            dilation: Optional[IntOrTuple] = 1,
            is_causal: Optional[BoolOrTuple] = False,
            rel_pos_bias: Optional[bool] = None,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            use_experimental_ops: bool = False,
            *,
            stride: IntOrTuple = 1,
            bias: Optional[bool] = None,
            embed_dim: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        n_dim, owner = self.na_dim, type(self).__name__
        dd = dict(device=device, dtype=dtype)
        dim = _dim(owner, dim, embed_dim)
        for name, value in (('num_heads', num_heads), ('kernel_size', kernel_size)):
            if value is None:
                raise TypeError(f'{owner}: missing required argument {name!r}')
        if bias is not None and rel_pos_bias is not None and bool(bias) != bool(rel_pos_bias):
            raise ValueError(f'{owner}: bias={bias!r} and rel_pos_bias={rel_pos_bias!r} disagree (bias is NATTEN '
                             '0.14/0.15\'s name of rel_pos_bias); pass one of them')
        rel_pos_bias = bool(rel_pos_bias if rel_pos_bias is not None else bias)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
            raise ValueError(f'{owner}: num_heads={num_heads!r} must be a positive int dividing dim={dim}')
        kernel = _per_axis(owner, 'kernel_size', kernel_size, n_dim, int, minimum=2)
        dilation = _per_axis(owner, 'dilation', 1 if dilation is None else dilation, n_dim, int, minimum=1)
        stride = _per_axis(owner, 'stride', 1 if stride is None else stride, n_dim, int, minimum=1)
        is_causal = _per_axis(owner, 'is_causal', False if is_causal is None else is_causal, n_dim, bool)
        if any(s > k for s, k in zip(stride, kernel)):
            raise ValueError(f'{owner}: stride={stride} cannot exceed kernel_size={kernel} on any axis')
        if rel_pos_bias and any(is_causal):
            raise NotImplementedError(f'{owner}: rel_pos_bias=True cannot be combined with is_causal={is_causal}: '
                                      'the relative positional bias is undefined for causal windows (as in NATTEN)')
        self.dim = self.embed_dim = dim  # embed_dim: NATTEN >= 0.20's name
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5  # NATTEN's `or`: 0 and None give the default
        if isinstance(self.scale, bool) or not isinstance(self.scale, numbers.Real) or not math.isfinite(self.scale):
            raise ValueError(f'{owner}: qk_scale={qk_scale!r} must be a finite number or None')
        self.kernel_size = kernel
        self.dilation = dilation
        self.stride = stride
        self.is_causal = is_causal
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in kernel), **dd))
            trunc_normal_(self.rpb, std=.02, mean=0., a=-2., b=2.)  # NATTEN's init
        else:
            self.register_parameter('rpb', None)
        self.attn_drop_rate = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.use_experimental_ops = use_experimental_ops  # NATTEN's torch.compile ops; visionattn's op already is one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, *spatial, C] -> [B, *spatial, C]; axes shorter than ``kernel_size * dilation`` are padded."""
        n_dim = self.na_dim
        if not isinstance(x, torch.Tensor) or x.dim() != n_dim + 2 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f'{type(self).__name__} expects a rank-{n_dim + 2} input [batch, {_AXES[n_dim]}, '
                             f'{self.dim}], got {got}')
        spatial = tuple(x.shape[1:-1])
        pads = [max(0, k * d - s) for k, d, s in zip(self.kernel_size, self.dilation, spatial)]
        if any(pads):  # zeros after the end of each short axis, as NATTEN 0.14/0.15 (F.pad lists the last axis first)
            x = F.pad(x, [0, 0] + [v for p in reversed(pads) for v in (0, p)])
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).unbind(-3)
        if self.training and self.attn_drop_rate > 0:
            out = self._unfused(q, k, v)
        else:
            with _autocast_off(q):  # NATTEN's kernel takes q, k, v as they come: fp32 logits for half inputs
                out = neighborhood_attention(q, k, v, self.kernel_size, self.dilation, self.stride, self.is_causal,
                                             rpb=self.rpb, scale=self.scale)
        out = out.flatten(-2)
        if any(pads):
            out = out[(slice(None), *(slice(0, s) for s in spatial))]
        return self.proj_drop(self.proj(out))

    def _unfused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale + rpb), attention dropout, then the weighted sum of v: NATTEN 0.17's unfused path."""
        batch, spatial = q.shape[0], tuple(q.shape[1:-2])
        table = neighbor_table(spatial, self.kernel_size, self.dilation, self.stride, self.is_causal).to(q.device)

        def heads_first(t):  # [B, *spatial, H, D] -> [B, H, N, D]
            return t.flatten(1, -3).transpose(1, 2)

        attn = _neighbor_logits(heads_first(q) * self.scale, heads_first(k), table, self.rpb).softmax(dim=-1)
        out = _neighbor_sum(self.attn_drop(attn), heads_first(v), table)
        return out.transpose(1, 2).reshape(batch, *spatial, self.num_heads, self.head_dim)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # A checkpoint of NATTEN 0.14/0.15's modules (an rpb unless bias=False) into one built with 0.17's default
        # (no rpb): PyTorch only names the unexpected key, or drops it silently when not strict. Say which argument
        # builds it (a warning: PyTorch does not tell this hook whether the load is strict).
        if self.rpb is None and prefix + 'rpb' in state_dict:
            warnings.warn(f'{prefix}rpb in the state dict is not loaded: this {type(self).__name__} has no relative '
                          'positional bias; pass rel_pos_bias=True (NATTEN 0.17 and this drop-in default to False, '
                          'NATTEN 0.14/0.15 had one unless bias=False)', stacklevel=2)

    def extra_repr(self) -> str:
        stride = f'stride={self.stride}, ' if any(s > 1 for s in self.stride) else ''
        return (f'head_dim={self.head_dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, '
                f'dilation={self.dilation}, {stride}is_causal={self.is_causal}, has_bias={self.rpb is not None}')


_ARGS_DOC = """
    Args:
        dim: Channels of the input and output (or ``embed_dim``); required.
        num_heads: Attention heads; must divide ``dim``.
        kernel_size: Window size, int or one per axis (>= 2).
        dilation: Dilation, int or per axis (None means 1).
        is_causal: Causal window, bool or per axis.
        rel_pos_bias: Learn a relative positional bias ``rpb`` [num_heads, 2k-1 per axis]; default False, as NATTEN
            0.17 (0.14/0.15 called it ``bias`` and defaulted to True). Not with causal axes.
        qkv_bias: Bias in the qkv projection.
        qk_scale: Scale of q . k; default ``head_dim ** -0.5``.
        attn_drop: Attention dropout, applied while training through the unfused path (see the module docstring).
        proj_drop: Dropout after the output projection.
        use_experimental_ops: Accepted and ignored (NATTEN's experimental torch.compile ops).
        stride: GNA stride (<= kernel_size), int or per axis; keyword only (NATTEN >= 0.20's modules).
        bias: NATTEN 0.14/0.15's name of ``rel_pos_bias``; keyword only.
        embed_dim: NATTEN >= 0.20's name of ``dim``; keyword only (0.20's positional order differs: it has
            ``stride`` fourth, where 0.17 and this module have ``dilation``).
        device: Device for the parameters.
        dtype: Data type for the parameters.
"""


class NeighborhoodAttention1D(_NeighborhoodAttention):
    na_dim = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    na_dim = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    na_dim = 3

    def __init__(
            self,
            dim: Optional[int] = None,
            num_heads: Optional[int] = None,
            kernel_size: Optional[IntOrTuple] = None,
            dilation: Optional[IntOrTuple] = 1,
            is_causal: Optional[BoolOrTuple] = False,
            rel_pos_bias: Optional[bool] = None,
            qkv_bias: bool = True,
            qk_scale: Optional[float] = None,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            use_experimental_ops: bool = False,
            *,
            stride: IntOrTuple = 1,
            bias: Optional[bool] = None,
            embed_dim: Optional[int] = None,
            kernel_size_d: Optional[int] = None,
            dilation_d: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        if kernel_size_d is not None or dilation_d is not None:
            # NATTEN 0.15: one kernel size / dilation for height and width, and optionally another for depth (its
            # `kernel_size_d or kernel_size` and `dilation_d or dilation`: 0 means "as height and width").
            if not isinstance(kernel_size, int) or not isinstance(1 if dilation is None else dilation, int):
                raise ValueError('NeighborhoodAttention3D: kernel_size_d/dilation_d (NATTEN 0.15) go with an int '
                                 f'kernel_size and dilation, got kernel_size={kernel_size!r}, dilation={dilation!r}')
            dilation = 1 if dilation is None else dilation
            kernel_size = (kernel_size_d or kernel_size, kernel_size, kernel_size)
            dilation = (dilation_d or dilation, dilation, dilation)
        super().__init__(dim, num_heads, kernel_size, dilation, is_causal, rel_pos_bias, qkv_bias, qk_scale,
                         attn_drop, proj_drop, use_experimental_ops, stride=stride, bias=bias, embed_dim=embed_dim,
                         device=device, dtype=dtype)


for _cls in (NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D):
    _n = _cls.na_dim
    _cls.__doc__ = (f'{_n}-D neighborhood attention on channels-last input [batch, {_AXES[_n]}, dim] (NATTEN 0.17\'s '
                    f'``NeighborhoodAttention{_n}D``): qkv projection, neighborhood attention with an optional '
                    'relative positional bias, output projection.\n' + _ARGS_DOC)
NeighborhoodAttention3D.__doc__ += ('        kernel_size_d: Depth kernel size with an int kernel_size (NATTEN 0.15); '
                                    'keyword only.\n        dilation_d: Depth dilation (NATTEN 0.15); keyword only.\n')
