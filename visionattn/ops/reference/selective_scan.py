"""Pure-PyTorch selective scan (Mamba's S6, arXiv 2312.00752) and VMamba's cross-scan (arXiv 2401.10166).

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
