"""Selective scan (Mamba's S6, arXiv 2312.00752) and VMamba's 2-D cross-scan (arXiv 2401.10166).

``selective_scan`` has mamba-ssm's ``selective_scan_fn`` semantics for real A, with Triton kernels instead of a CUDA
build (``triton/selective_scan.py``) and a step-by-step PyTorch reference (``reference/selective_scan.py``).
"""
from typing import Optional, Tuple, Union

import torch

from .checks import choose_backend
from .reference.selective_scan import cross_merge_ref, cross_scan_ref, selective_scan_ref

__all__ = ['selective_scan', 'cross_scan', 'cross_merge']


def _check_bc(name: str, bc: torch.Tensor, batch: int, dim: int, n_state: int, seq_len: int) -> torch.Tensor:
    if bc.dim() == 3:
        bc = bc.unsqueeze(1)
    if bc.dim() != 4 or bc.shape[0] != batch or bc.shape[2:] != (n_state, seq_len):
        raise ValueError(f'{name} must be [batch={batch}, groups, N={n_state}, L={seq_len}] or [batch, N, L], '
                         f'got {list(bc.shape)}')
    if dim % bc.shape[1]:
        raise ValueError(f'{name} has {bc.shape[1]} groups, which do not divide dim={dim}')
    return bc


def _check_vector(name: str, x: Optional[torch.Tensor], dim: int) -> None:
    if x is not None and x.shape != (dim,):
        raise ValueError(f'{name} must be [dim={dim}], got {list(x.shape)}')


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
    _check_vector('D', D, dim)
    _check_vector('delta_bias', delta_bias, dim)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if not all(t.is_floating_point() for t in tensors if t is not None):
        raise TypeError('selective_scan takes floating-point tensors only')
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        raise ValueError(f'inputs are on several devices: {sorted(map(str, devices))}')
    chosen = choose_backend('selective_scan', backend, tensors)
    if chosen == 'reference':
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    from .triton.selective_scan import selective_scan_triton
    y, last = selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
    return (y, last) if return_last_state else y


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
