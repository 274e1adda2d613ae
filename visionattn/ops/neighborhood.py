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
from typing import Optional, Sequence, Tuple, Union

import torch

from .checks import NotSupportedError, choose_backend, env_signature, finite_scale
from .reference.neighborhood import neighborhood_attention_ref

__all__ = ['neighborhood_attention', 'na_triton_checks', 'normalize_na_args']

IntOrTuple = Union[int, Sequence[int]]
BoolOrTuple = Union[bool, Sequence[bool]]

# Largest head dim the Triton kernels take (it is padded to a power of two inside).
TRITON_MAX_HEAD_DIM = 128


def _per_axis(name: str, value, n_dim: int, kind: type) -> tuple:
    # The common call passes a plain int (bool): no loop. bool is a subclass of int, hence ``type(x) is``.
    if type(value) is kind:
        return (value,) * n_dim
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

    Runs on every call, so the checks read each tensor attribute once; under torch.compile they are evaluated while
    tracing and leave nothing in the graph (the messages are only formatted on the branch that raises).

    Raises:
        ValueError: naming the problem (ranks and shapes, kernel/dilation/stride values, an input too small for
            kernel * dilation, rpb shape or rpb with a causal axis).
    """
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        raise ValueError('neighborhood_attention: q, k and v must be tensors')
    q_shape, k_shape, v_shape = q.shape, k.shape, v.shape
    rank = len(q_shape)
    if rank not in (4, 5, 6):
        raise ValueError(f'neighborhood_attention: q must be [batch, *spatial, heads, head_dim] with 1, 2 or 3 '
                         f'spatial axes (4-D, 5-D or 6-D), got shape {tuple(q_shape)}')
    if k_shape != q_shape:
        raise ValueError(f'neighborhood_attention: k shape {tuple(k_shape)} != q shape {tuple(q_shape)}')
    if len(v_shape) != rank or v_shape[:-1] != q_shape[:-1]:
        raise ValueError(f'neighborhood_attention: v shape {tuple(v_shape)} must match q shape {tuple(q_shape)} '
                         'except in the last (head_dim) axis')
    dtype = q.dtype
    if not (dtype.is_floating_point and k.dtype == dtype and v.dtype == dtype):
        raise ValueError(f'neighborhood_attention: q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, '
                         f'{v.dtype}')
    device = q.device
    if not (k.device == device and v.device == device):
        raise ValueError(f'neighborhood_attention: q, k, v are on different devices ({q.device}, {k.device}, '
                         f'{v.device})')
    if 0 in q_shape[1:] or v_shape[-1] == 0:  # a batch of 0 is fine: its output is empty
        raise ValueError(f'neighborhood_attention: empty input, q shape {tuple(q_shape)}, v shape {tuple(v_shape)}')
    n_dim = rank - 3
    spatial = q_shape[1:1 + n_dim]
    kernel = _per_axis('kernel_size', kernel_size, n_dim, int)
    dil = _per_axis('dilation', dilation, n_dim, int)
    strides = _per_axis('stride', stride, n_dim, int)
    causal = _per_axis('is_causal', is_causal, n_dim, bool)
    if min(kernel) < 2:
        raise ValueError(f'neighborhood_attention: kernel_size={kernel_size!r} must be >= 2 on every axis (as NATTEN)')
    if min(dil) < 1:
        raise ValueError(f'neighborhood_attention: dilation={dilation!r} must be >= 1 on every axis')
    if min(strides) < 1:
        raise ValueError(f'neighborhood_attention: stride={stride!r} must be >= 1 on every axis')
    for i in range(n_dim):
        if strides[i] > kernel[i]:
            raise ValueError(f'neighborhood_attention: stride {strides} cannot exceed kernel_size {kernel} on any '
                             'axis')
    for i in range(n_dim):
        if kernel[i] * dil[i] > spatial[i]:
            raise ValueError(f'neighborhood_attention: input spatial size {tuple(spatial)} is too small for '
                             f'kernel_size {kernel} x dilation {dil}: kernel_size * dilation must be <= the size on '
                             'every axis')
    if rpb is not None:
        if True in causal:
            raise NotSupportedError('neighborhood_attention: rpb (relative positional bias) cannot be combined with '
                                    'a causal axis (NATTEN forbids it)')
        want = (q_shape[-2], *[2 * kk - 1 for kk in kernel])
        if not isinstance(rpb, torch.Tensor) or rpb.shape != want:
            got = tuple(rpb.shape) if isinstance(rpb, torch.Tensor) else type(rpb).__name__
            raise ValueError(f'neighborhood_attention: rpb shape {got} != [heads, 2k-1 per axis] = {want}')
        if not rpb.dtype.is_floating_point or rpb.device != device:
            raise ValueError(f'neighborhood_attention: rpb must be a floating tensor on {q.device}, got {rpb.dtype} on '
                             f'{rpb.device}')
    return kernel, dil, strides, causal, finite_scale('neighborhood_attention', scale, q_shape[-1] ** -0.5)


def na_triton_checks(q: torch.Tensor, v: torch.Tensor) -> list:
    """The Triton kernel's own ``(ok, reason)`` checks, for :func:`visionattn.ops.checks.choose_backend`."""
    dim, dim_v = q.shape[-1], v.shape[-1]
    # Reasons are only worded for a failing check (this runs on every call).
    return [
        (dim <= TRITON_MAX_HEAD_DIM, '' if dim <= TRITON_MAX_HEAD_DIM else f'head_dim {dim} > {TRITON_MAX_HEAD_DIM}'),
        (dim_v <= TRITON_MAX_HEAD_DIM,
         '' if dim_v <= TRITON_MAX_HEAD_DIM else f'value head_dim {dim_v} > {TRITON_MAX_HEAD_DIM}'),
    ]


def _fx_proxy(*args) -> Optional[torch.fx.Proxy]:
    for arg in args:
        if isinstance(arg, torch.fx.Proxy):
            return arg
    return None


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

    Under ``torch.fx`` symbolic tracing the call becomes one ``call_function`` node (an FX leaf); under
    ``torch.compile`` the argument checks and the backend choice are evaluated while tracing, so the graph holds the
    chosen path only (the Triton custom op, or the reference's ops) and the call does not break it.
    """
    proxy = _fx_proxy(q, k, v, rpb)
    if proxy is not None:
        # torch.fx symbolic tracing: the op is one node of the graph (a leaf, as torch.fx.wrap makes one, but whichever
        # module calls it), so tracing never reaches the checks below, which need real shapes.
        return proxy.tracer.create_proxy(
            'call_function', neighborhood_attention, (q, k, v, kernel_size),
            dict(dilation=dilation, stride=stride, is_causal=is_causal, rpb=rpb, scale=scale, backend=backend))
    key = _call_signature(q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend)
    checked = _TRITON_CALLS.get(key) if key is not None else None
    if checked is not None:
        from .triton.neighborhood import neighborhood_attention_triton
        return neighborhood_attention_triton(q, k, v, *checked, rpb)
    kernel, dil, strides, causal, scale = normalize_na_args(q, k, v, kernel_size, dilation, stride, is_causal, rpb,
                                                            scale)
    if q.shape[0] == 0:
        # No sample: the empty output, [0, *spatial, heads, head_dim_v] like v (and a function of v for autograd).
        return v * 0
    chosen = choose_backend('neighborhood_attention', backend, [q, k, v, rpb], na_triton_checks(q, v))
    if chosen == 'triton':
        if key is not None:
            if len(_TRITON_CALLS) >= 1024:
                _TRITON_CALLS.clear()
            _TRITON_CALLS[key] = (kernel, dil, strides, causal, scale)
        from .triton.neighborhood import neighborhood_attention_triton
        return neighborhood_attention_triton(q, k, v, kernel, dil, strides, causal, scale, rpb)
    return neighborhood_attention_ref(q, k, v, kernel, dil, strides, causal, rpb=rpb, scale=scale)


# Eager calls that passed the checks and chose Triton, by everything the checks and the choice read: a repeated call
# (every layer of a model, every step) skips both. Only plain ints/bools/floats are keyed (True == 1 as dict keys, so
# types are part of the test), and the environment variables the choice reads are part of the key.
_TRITON_CALLS = {}


def _call_signature(q, k, v, kernel_size, dilation, stride, is_causal, rpb, scale, backend) -> Optional[tuple]:
    if torch.compiler.is_compiling() or not (type(kernel_size) is int and type(dilation) is int
                                              and type(stride) is int and type(is_causal) is bool
                                              and (scale is None or type(scale) is float)):
        return None
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return None
    if rpb is None:
        rpb_key = None
    elif isinstance(rpb, torch.Tensor):
        rpb_key = (rpb.shape, rpb.dtype, rpb.device)
    else:
        return None
    return (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, kernel_size,
            dilation, stride, is_causal, scale, rpb_key, backend, env_signature())
