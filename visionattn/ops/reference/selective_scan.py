"""Pure-PyTorch selective scan (Mamba's S6, arXiv 2312.00752), VMamba's cross-scan (arXiv 2401.10166) and the scan
of a map along several orders (VMamba's raster orders, LaMamba-Diff's continuous ones).

The oracle for the Triton kernels and the CPU path. The scan runs step by step in fp32, exactly as mamba-ssm's
``selective_scan_ref`` defines it (state-spaces/mamba, ``mamba_ssm/ops/selective_scan_interface.py``), for real A.
"""
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


def expand_groups(bc: torch.Tensor, dim: int) -> torch.Tensor:
    """[batch, groups, N, L] (or [batch, N, L]) -> [batch, dim, N, L]: channel d reads group d // (dim // groups)."""
    if bc.dim() == 3:
        bc = bc.unsqueeze(1)
    return bc.repeat_interleave(dim // bc.shape[1], dim=1)


def selective_scan_ref(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                       delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                       return_last_state: bool = False
                       ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """The selective scan, one time step after another (shapes as in :func:`visionattn.ops.selective_scan`)."""
    dtype = u.dtype
    u, delta, A = u.float(), delta.float(), A.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = u.shape[1]
    B, C = expand_groups(B.float(), dim), expand_groups(C.float(), dim)
    decay = torch.exp(delta.unsqueeze(2) * A[:, :, None])  # [batch, dim, N, L]
    drive = (delta * u).unsqueeze(2) * B  # [batch, dim, N, L]
    state = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    # unbind once: indexing [..., t] per step would make autograd build a full-size gradient for every step
    for decay_t, drive_t, c_t in zip(decay.unbind(-1), drive.unbind(-1), C.unbind(-1)):
        state = decay_t * state + drive_t
        ys.append((state * c_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype)
    return (y, state) if return_last_state else y


def cross_scan_ref(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4, C, H*W]: row-major, column-major, and both reversed (VMamba's CrossScan)."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    forward = torch.stack((rows, cols), dim=1)
    return torch.cat((forward, forward.flip(-1)), dim=1)


def cross_merge_ref(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, 4, C, H*W] in scan order -> [B, C, H*W] row-major: each direction mapped back, then summed."""
    forward = y[:, :2] + y[:, 2:].flip(-1)
    batch, _, channels, _ = y.shape
    cols = forward[:, 1].reshape(batch, channels, width, height).transpose(2, 3).flatten(2)
    return forward[:, 0] + cols


def scan_orders(height: int, width: int, kind: str, device=None) -> torch.Tensor:
    """The four scan orders of an H x W map: [4, H*W] row-major positions, ``orders[k, t]`` visited at step t.

    ``'cross'``: VMamba's CrossScan, row-major, column-major, then both reversed (the orders of
    :func:`cross_scan_ref`). ``'continuous'``: LaMamba-Diff's snake paths (model/continuous_scan.py
    ``get_continuous_paths``, generalised from N x N to H x W): two along rows, starting at the top-left and the
    bottom-left corner, two along columns, starting at the bottom-left and the bottom-right corner, each turning at
    every row or column end, so that no step jumps across the image.
    """
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    if kind == 'cross':
        row_major = torch.arange(height * width, device=device)
        col_major = (rows * width + cols).t().flatten()
        forward = torch.stack((row_major, col_major))
        return torch.cat((forward, forward.flip(-1)))
    if kind != 'continuous':
        raise ValueError(f"scan orders are 'cross' or 'continuous', got {kind!r}")
    snake_cols = torch.where(rows % 2 == 0, cols, width - 1 - cols)  # [H, W]: column visited at step (row, j)
    path_top = rows * width + snake_cols
    path_bottom = (height - 1 - rows) * width + snake_cols
    cols_t = torch.arange(width, device=device)[:, None]
    rows_t = torch.arange(height, device=device)[None, :]
    snake_rows = torch.where(cols_t % 2 == 0, rows_t, height - 1 - rows_t)  # [W, H]: row visited at step (col, i)
    path_left = (height - 1 - snake_rows) * width + cols_t
    path_right = (height - 1 - snake_rows) * width + (width - 1 - cols_t)
    return torch.stack([path_top.flatten(), path_bottom.flatten(), path_left.flatten(), path_right.flatten()])


def project_steps(low: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """SS2D's step sizes from their rank-R projections: [batch, L, K, R] x [K, dim, R] -> [batch, L, K, dim]
    (VMamba's ``dt_projs``, one matmul per order), in the projections' dtype as autocast would run it."""
    return torch.einsum('blkr,kdr->blkd', low, proj.to(low.dtype))


def cross_selective_scan_ref(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                             D: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor], delta_softplus: bool,
                             orders: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """The scans of a map along K orders, summed at each position (shapes as in
    :func:`visionattn.ops.cross_selective_scan`; ``orders`` [K, L] from :func:`scan_orders`).

    Written as VMamba writes it: gather each order's sequence, scan the K sequences as K groups of channels (u cast
    to ``out_dtype`` first, as VMamba's ``force_fp32`` casts its scan inputs), map each output back to its positions
    and sum.
    """
    batch, height, width, dim = x.shape
    seq_len = height * width
    n_orders = orders.shape[0]
    x = x.reshape(batch, seq_len, dim)

    def along_orders(t):  # [batch, L, K, c] in positions -> [batch, K, c, L] in each order's steps
        return torch.stack([t[:, orders[k], k] for k in range(n_orders)], dim=1).transpose(2, 3)
    xs = along_orders(x[:, :, None].expand(batch, seq_len, n_orders, dim)).reshape(batch, n_orders * dim, seq_len)
    deltas = along_orders(delta).reshape(batch, n_orders * dim, seq_len)
    ys = selective_scan_ref(xs.to(out_dtype), deltas, A, along_orders(B), along_orders(C), D, None, delta_bias,
                            delta_softplus)
    inverse = torch.argsort(orders, dim=1)[None, :, None, :].expand(batch, n_orders, dim, seq_len)
    ys = ys.view(batch, n_orders, dim, seq_len).gather(3, inverse)
    return ys.sum(1).transpose(1, 2).reshape(batch, height, width, dim)
