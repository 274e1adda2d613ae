"""Selective scan (Mamba's S6, arXiv 2312.00752) and VMamba's 2-D cross-scan (arXiv 2401.10166).

``selective_scan`` has mamba-ssm's ``selective_scan_fn`` semantics for real A, with Triton kernels instead of a CUDA
build (``triton/selective_scan.py``) and a step-by-step PyTorch reference (``reference/selective_scan.py``).
``cross_selective_scan`` is SS2D's scan of a map along four orders in one call: the kernels read each order's steps
straight from the map, so neither the four reordered copies of the input nor the merge of the outputs is materialised.
"""
from typing import Optional, Tuple, Union

import torch

from .cache import size_cached
from .checks import choose_backend
from .reference.selective_scan import (
    cross_merge_ref,
    cross_scan_ref,
    cross_selective_scan_ref,
    project_steps,
    scan_orders,
    selective_scan_ref,
)

__all__ = ['selective_scan', 'cross_selective_scan', 'scan_orders', 'cross_scan', 'cross_merge']


def _check_bc(name: str, bc: torch.Tensor, batch: int, dim: int, n_state: int, seq_len: int) -> torch.Tensor:
    if bc.dim() == 3:
        bc = bc.unsqueeze(1)
    if bc.dim() != 4 or bc.shape[0] != batch or bc.shape[2:] != (n_state, seq_len):
        raise ValueError(f'{name} must be [batch={batch}, groups, N={n_state}, L={seq_len}] or [batch, N, L], '
                         f'got {list(bc.shape)}')
    if bc.shape[1] == 0:
        raise ValueError(f'{name} has no group (shape {list(bc.shape)}): at least one group of N={n_state} '
                         'projections is needed')
    if dim % bc.shape[1]:
        raise ValueError(f'{name} has {bc.shape[1]} groups, which do not divide dim={dim}')
    return bc


def _check_vector(name: str, x: Optional[torch.Tensor], dim: int, what: str = 'dim') -> None:
    if x is not None and x.shape != (dim,):
        raise ValueError(f'{name} must be [{what}={dim}], got {list(x.shape)}')


def _dense(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A per-channel parameter (A, D, delta_bias) as the kernels read it: contiguous (a transposed or expanded one
    is copied; differentiable)."""
    return t if t is None or t.is_contiguous() else t.contiguous()


def _check_inputs(op: str, tensors) -> None:
    if not all(t.is_floating_point() for t in tensors if t is not None):
        raise TypeError(f'{op} takes floating-point tensors only')
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f'{op}: inputs are on several devices: {sorted(map(str, devices))}')


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: Optional[str] = None
                   ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """The selective state-space scan, per channel d and time t (Mamba, Algorithm 2)::

        dt = softplus(delta + delta_bias)                 (softplus only with delta_softplus)
        h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (state [dim, N], h_{-1} = 0)
        y_t = <C_t, h_t> + D * u_t;  y *= silu(z)         (D and z optional)

    Args:
        u: [batch, dim, L] input.
        delta: [batch, dim, L] step sizes (before bias and softplus).
        A: [dim, N] real state matrix (diagonal per channel; negative for a stable scan).
        B: [batch, groups, N, L] input projections, channel d using group d // (dim // groups); or [batch, N, L].
        C: Output projections, shaped as B.
        D: [dim] skip weights, or None.
        z: [batch, dim, L] gate, or None.
        delta_bias: [dim] added to delta, or None.
        delta_softplus: Apply softplus to delta (+ bias).
        return_last_state: Also return the final state [batch, dim, N] (fp32; no gradient flows through it).
        backend: None (auto), 'reference' or 'triton'.

    Returns:
        y [batch, dim, L] in u's dtype, and the last state if asked for.
    """
    if u.dim() != 3:
        raise ValueError(f'u must be [batch, dim, L], got {list(u.shape)}')
    batch, dim, seq_len = u.shape
    if seq_len == 0:
        raise ValueError('the sequence is empty (L = 0)')
    for name, x in (('delta', delta), ('z', z)):
        if x is not None and x.shape != u.shape:
            raise ValueError(f'{name} must be shaped as u {list(u.shape)}, got {list(x.shape)}')
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f'A must be [dim={dim}, N], got {list(A.shape)}')
    if A.is_complex():
        raise TypeError('complex A is not supported (real A, as S4D-real / Mamba / VMamba use)')
    n_state = A.shape[1]
    B = _check_bc('B', B, batch, dim, n_state, seq_len)
    C = _check_bc('C', C, batch, dim, n_state, seq_len)
    if C.shape[1] != B.shape[1]:  # one group count for both, as mamba-ssm's kernel checks
        raise ValueError(f'C must be shaped as B: B has {B.shape[1]} groups, C has {C.shape[1]}')
    _check_vector('D', D, dim)
    _check_vector('delta_bias', delta_bias, dim)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    _check_inputs('selective_scan', tensors)
    chosen = choose_backend('selective_scan', backend, tensors)
    if chosen == 'reference':
        out = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        # the last state carries no gradient on either path (as mamba-ssm's selective_scan_fn): the reference's
        # autograd graph would otherwise give a gradient that the kernels' backward cannot
        return (out[0], out[1].detach()) if return_last_state else out
    from .triton.selective_scan import selective_scan_triton
    A, D, delta_bias = _dense(A), _dense(D), _dense(delta_bias)  # the kernels index these per channel, unstrided
    y, last = selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (y, last) if return_last_state else y


_ORDER_KINDS = ('cross', 'continuous')


def cross_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         D: Optional[torch.Tensor] = None, delta_bias: Optional[torch.Tensor] = None,
                         delta_softplus: bool = False, orders: str = 'cross', out_dtype: Optional[torch.dtype] = None,
                         backend: Optional[str] = None, delta_proj: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SS2D's scan (VMamba, arXiv 2401.10166): the map scanned along K = 4 orders, each order's output mapped back to
    its positions and the four summed. Equal to ``cross_scan`` -> :func:`selective_scan` (the K orders as K groups of
    channels) -> ``cross_merge``, without materialising the reordered copies.

    Every per-position tensor is given in the map's row-major positions, as the projections of the map produce it;
    the scan order only decides in which order the steps are taken.

    Args:
        x: [batch, H, W, dim] the map (u, shared by the orders); the kernels' tiles are laid out for channels-last
            memory (a step's channels adjacent), other strides are read as they are.
        delta: [batch, H*W, K, dim] each order's step sizes (before bias and softplus), at the map's positions; with
            ``delta_proj``, [batch, H*W, K, R] their rank-R projections (SS2D's ``dts`` before ``dt_proj``).
        A: [K*dim, N] state matrices, order k's channels at rows k*dim..(k+1)*dim.
        B: [batch, H*W, K, N] input projections of each order, at the map's positions.
        C: Output projections, shaped as B.
        D: [K*dim] skip weights, or None.
        delta_bias: [K*dim] added to delta, or None.
        delta_softplus: Apply softplus to delta (+ bias).
        orders: 'cross' (VMamba's raster orders: row-major, column-major, both reversed) or 'continuous'
            (LaMamba-Diff's snake paths); see :func:`scan_orders`.
        out_dtype: dtype of the scan's output and of the sum (default x's). VMamba's ``force_fp32`` is
            ``out_dtype=torch.float32``: its scan then reads u in fp32, which a bf16 or fp16 x gives exactly.
        backend: None (auto), 'reference' or 'triton'.
        delta_proj: [K, dim, R] SS2D's low-rank step projection (``dt_projs_weight``), or None: the step sizes are
            then ``einsum('blkr,kdr->blkd', delta, delta_proj)``. The merged kernels (state size 1, opt-in, see
            ``triton/cross_scan.py``) compute them on chip in fp32 instead of reading [batch, H*W, K, dim] of them;
            otherwise the einsum runs first, as SS2D runs it.

    Returns:
        [batch, H, W, dim] in ``out_dtype``.
    """
    if x.dim() != 4:
        raise ValueError(f'cross_selective_scan takes x as [batch, H, W, dim], got {list(x.shape)}')
    if orders not in _ORDER_KINDS:
        raise ValueError(f'orders must be one of {_ORDER_KINDS}, got {orders!r}')
    batch, height, width, dim = x.shape
    seq_len, n_orders = height * width, 4
    if seq_len == 0 or dim == 0:
        raise ValueError(f'the map is empty: x is {list(x.shape)}')
    if delta_proj is not None:
        if delta_proj.dim() != 3 or delta_proj.shape[:2] != (n_orders, dim):
            raise ValueError(f'delta_proj must be [K={n_orders}, dim={dim}, R], got {list(delta_proj.shape)}')
        if delta.shape != (batch, seq_len, n_orders, delta_proj.shape[2]):
            raise ValueError(f'with delta_proj, delta must be [batch={batch}, H*W={seq_len}, K={n_orders}, '
                             f'R={delta_proj.shape[2]}], got {list(delta.shape)}')
    elif delta.shape != (batch, seq_len, n_orders, dim):
        raise ValueError(f'delta must be [batch={batch}, H*W={seq_len}, K={n_orders}, dim={dim}], '
                         f'got {list(delta.shape)}')
    if A.dim() != 2 or A.shape[0] != n_orders * dim:
        raise ValueError(f'A must be [K*dim={n_orders * dim}, N], got {list(A.shape)}')
    if A.is_complex():
        raise TypeError('complex A is not supported (real A, as VMamba uses)')
    n_state = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        if t.shape != (batch, seq_len, n_orders, n_state):
            raise ValueError(f'{name} must be [batch={batch}, H*W={seq_len}, K={n_orders}, N={n_state}], '
                             f'got {list(t.shape)}')
    _check_vector('D', D, n_orders * dim, 'K*dim')
    _check_vector('delta_bias', delta_bias, n_orders * dim, 'K*dim')
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if not out_dtype.is_floating_point:
        raise TypeError(f'out_dtype must be a floating-point dtype, got {out_dtype}')
    tensors = (x, delta, A, B, C, D, delta_bias, delta_proj)
    _check_inputs('cross_selective_scan', tensors)
    chosen = choose_backend('cross_selective_scan', backend, tensors)
    path = scan_orders(height, width, orders, x.device) if torch.compiler.is_compiling() else \
        _cached_orders(height, width, orders, x.device)
    if chosen == 'reference':
        if delta_proj is not None:
            delta = project_steps(delta, delta_proj)
        return cross_selective_scan_ref(x, delta, A, B, C, D, delta_bias, bool(delta_softplus), path, out_dtype)
    from .triton.selective_scan import cross_selective_scan_triton
    return cross_selective_scan_triton(x, delta, _dense(A), B, C, _dense(D), _dense(delta_bias), bool(delta_softplus),
                                       path, out_dtype, orders, delta_proj)


# the orders of a size, built once (eager): outside inference mode and autograd, so that an inference call's serve
# a training step
_cached_orders = size_cached(64)(scan_orders)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """VMamba's four scan orders of a feature map: [B, C, H, W] -> [B, 4, C, H*W].

    Directions: row-major, column-major, then both reversed. A layout change (a strided copy), differentiable by
    autograd on every device.
    """
    if x.dim() != 4:
        raise ValueError(f'cross_scan takes [B, C, H, W], got {list(x.shape)}')
    return cross_scan_ref(x)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse mapping of :func:`cross_scan`, summed: [B, 4, C, H*W] (scan order) -> [B, C, H*W] (row-major)."""
    if y.dim() != 4 or y.shape[1] != 4 or y.shape[-1] != height * width:
        raise ValueError(f'cross_merge takes [B, 4, C, H*W={height * width}], got {list(y.shape)}')
    return cross_merge_ref(y, height, width)
