"""Neighborhood attention (NA) in 1-D, 2-D and 3-D with NATTEN's semantics.

Hassani et al., "Neighborhood Attention Transformer" (CVPR 2023) and "Dilated Neighborhood Attention Transformer"
(2022); Hassani et al., "Generalized Neighborhood Attention" (2025) for the stride. Semantics follow NATTEN
(github.com/SHI-Labs/NATTEN, MIT): per axis of length L, kernel k, dilation d, stride s:

- tokens split into d dilation groups by ``i % d``; attention stays inside a group, at position ``p = i // d``;
- the window is clamped at the borders, so every query sees exactly k keys per axis: ``start = clamp(p - k//2, 0,
  Lg - k)`` (Lg the group's length; even k: k//2 keys before the centre and k//2 - 1 after);
- with stride s each query takes the window of its stride group's leader ``min((p//s)*s + s//2, Lg-1)``;
- causal axes allow keys in ``[max(leader - k + 1, 0), p]`` with the leader the stride group's last member;
- the relative positional bias (rpb, [heads, 2k-1, ...]) is indexed by ``(key - query) / d + k - 1`` per axis and
  added after scaling q: ``softmax(q * scale @ k^T + rpb) @ v``.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch

from .checks import choose_backend
from .reference import neighborhood_attention_ref

__all__ = ['neighborhood_attention', 'na_triton_checks', 'normalize_na_args']

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

# Largest head dim the Triton kernels take (it is padded to a power of two inside).
TRITON_MAX_HEAD_DIM = 128


def _per_axis(name: str, value, n_dim: int, kind: type) -> tuple:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n_dim
    if len(values) != n_dim:
        raise ValueError(f'neighborhood_attention: {name}={value!r} has {len(values)} entries, expected one per '
                         f'spatial axis ({n_dim})')
    for x in values:
        if kind is bool:
            if not isinstance(x, bool):
                raise ValueError(f'neighborhood_attention: {name}={value!r} must be a bool or a tuple of bools')
        elif isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f'neighborhood_attention: {name}={value!r} must be an int or a tuple of ints')
    return values


def normalize_na_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: IntOrTuple,
                      dilation: IntOrTuple = 1, stride: IntOrTuple = 1, is_causal: BoolOrTuple = False,
                      rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None
                      ) -> Tuple[tuple, tuple, tuple, tuple, float]:
    """Validate NA arguments against the inputs; returns per-axis (kernel, dilation, stride, causal) and the scale.

    Raises:
        ValueError: naming the problem (ranks and shapes, kernel/dilation/stride values, an input too small for
            kernel * dilation, rpb shape or rpb with a causal axis).
    """
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        raise ValueError('neighborhood_attention: q, k and v must be tensors')
    if q.dim() not in (4, 5, 6):
        raise ValueError(f'neighborhood_attention: q must be [batch, *spatial, heads, head_dim] with 1, 2 or 3 '
                         f'spatial axes (4-D, 5-D or 6-D), got shape {tuple(q.shape)}')
    if k.shape != q.shape:
        raise ValueError(f'neighborhood_attention: k shape {tuple(k.shape)} != q shape {tuple(q.shape)}')
    if v.dim() != q.dim() or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(f'neighborhood_attention: v shape {tuple(v.shape)} must match q shape {tuple(q.shape)} '
                         'except in the last (head_dim) axis')
    if not (q.is_floating_point() and q.dtype == k.dtype == v.dtype):
        raise ValueError(f'neighborhood_attention: q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, '
                         f'{v.dtype}')
    if not q.device == k.device == v.device:
        raise ValueError(f'neighborhood_attention: q, k, v are on different devices ({q.device}, {k.device}, '
                         f'{v.device})')
    if min(q.shape) == 0 or v.shape[-1] == 0:
        raise ValueError(f'neighborhood_attention: empty input, q shape {tuple(q.shape)}, v shape {tuple(v.shape)}')
    n_dim = q.dim() - 3
    spatial = tuple(q.shape[1:1 + n_dim])
    kernel = _per_axis('kernel_size', kernel_size, n_dim, int)
    dil = _per_axis('dilation', dilation, n_dim, int)
    strides = _per_axis('stride', stride, n_dim, int)
    causal = _per_axis('is_causal', is_causal, n_dim, bool)
    if any(x < 2 for x in kernel):
        raise ValueError(f'neighborhood_attention: kernel_size={kernel_size!r} must be >= 2 on every axis (as NATTEN)')
    if any(x < 1 for x in dil):
        raise ValueError(f'neighborhood_attention: dilation={dilation!r} must be >= 1 on every axis')
    if any(x < 1 for x in strides):
        raise ValueError(f'neighborhood_attention: stride={stride!r} must be >= 1 on every axis')
    if any(s > kk for s, kk in zip(strides, kernel)):
        raise ValueError(f'neighborhood_attention: stride {strides} cannot exceed kernel_size {kernel} on any axis')
    if any(kk * d > length for kk, d, length in zip(kernel, dil, spatial)):
        raise ValueError(f'neighborhood_attention: input spatial size {spatial} is too small for kernel_size {kernel} '
                         f'x dilation {dil}: kernel_size * dilation must be <= the size on every axis')
    if rpb is not None:
        if any(causal):
            raise ValueError('neighborhood_attention: rpb (relative positional bias) cannot be combined with a causal '
                             'axis (NATTEN forbids it)')
        want = (q.shape[-2], *(2 * kk - 1 for kk in kernel))
        if not isinstance(rpb, torch.Tensor) or tuple(rpb.shape) != want:
            got = tuple(rpb.shape) if isinstance(rpb, torch.Tensor) else type(rpb).__name__
            raise ValueError(f'neighborhood_attention: rpb shape {got} != [heads, 2k-1 per axis] = {want}')
        if not rpb.is_floating_point() or rpb.device != q.device:
            raise ValueError(f'neighborhood_attention: rpb must be a floating tensor on {q.device}, got {rpb.dtype} on '
                             f'{rpb.device}')
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f'neighborhood_attention: scale={scale!r} must be a finite number or None')
    return kernel, dil, strides, causal, float(scale)


def na_triton_checks(q: torch.Tensor, v: torch.Tensor) -> list:
    """The Triton kernel's own ``(ok, reason)`` checks, for :func:`visionattn.ops.checks.choose_backend`."""
    return [
        (q.shape[-1] <= TRITON_MAX_HEAD_DIM, f'head_dim {q.shape[-1]} > {TRITON_MAX_HEAD_DIM}'),
        (v.shape[-1] <= TRITON_MAX_HEAD_DIM, f'value head_dim {v.shape[-1]} > {TRITON_MAX_HEAD_DIM}'),
    ]


def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: IntOrTuple,
                           dilation: IntOrTuple = 1, stride: IntOrTuple = 1, is_causal: BoolOrTuple = False,
                           rpb: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                           backend: Optional[str] = None) -> torch.Tensor:
    """Neighborhood attention over 1, 2 or 3 spatial axes, NATTEN's semantics (see the module docstring).

    Args:
        q: [batch, *spatial, heads, head_dim] (heads-last, as NATTEN); views such as slices of a fused qkv
            projection are fine.
        k: Same shape as q.
        v: [batch, *spatial, heads, head_dim_v].
        kernel_size: Window size, int or one per spatial axis (>= 2).
        dilation: Dilation, int or per axis.
        stride: GNA stride (<= kernel_size), int or per axis; stride == kernel_size gives blocked windows.
        is_causal: Causal window, bool or per axis.
        rpb: Relative positional bias [heads, 2k0-1, (2k1-1, (2k2-1))], or None; not with causal axes.
        scale: Multiplier of q before QK^T (default head_dim ** -0.5).
        backend: None (automatic; ``VISIONATTN_BACKEND``), 'reference' or 'triton'.

    Returns:
        [batch, *spatial, heads, head_dim_v] in q's dtype.

    Raises:
        ValueError: for invalid shapes or arguments (the message names the problem).
    """
    kernel, dil, strides, causal, scale = normalize_na_args(q, k, v, kernel_size, dilation, stride, is_causal, rpb,
                                                            scale)
    chosen = choose_backend('neighborhood_attention', backend, [q, k, v, rpb], na_triton_checks(q, v))
    if chosen == 'triton':
        from .triton.neighborhood import neighborhood_attention_triton
        return neighborhood_attention_triton(q, k, v, kernel, dil, strides, causal, rpb, scale)
    return neighborhood_attention_ref(q, k, v, kernel, dil, strides, causal, rpb=rpb, scale=scale)
