"""VMamba's 2-D selective scan (SS2D) and Swin's shifted-window attention, as LaMamba / LaMamba-Diff use them.

SS2D: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024, arXiv:2401.10166 (github.com/MzeroMiko/VMamba,
MIT), in the ``forward_type='v2'`` form that LaMamba-Diff vendors (github.com/yunxiangfu2001/LaMamba-Diff,
model/vmamba.py ``SS2D.__initv2__`` / ``forwardv2`` / ``forward_corev2``, MIT). Parameter names and initialisation
follow that code (``in_proj``, ``conv2d``, ``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``,
``Ds``, ``out_norm``, ``out_proj``), so its state dicts map one to one.

LaMamba-Diff's "continuous scan" (model/continuous_scan.py) replaces VMamba's raster orders by four snake paths
that never jump across the image: two row-wise (from the top-left and bottom-left corners) and two column-wise (from
the bottom-left and bottom-right corners). The official code only handles square maps; here the same paths are
defined for any H x W (identical for H == W).

Shifted-window attention: Liu et al., "Swin Transformer", ICCV 2021, arXiv:2103.14030 (github.com/microsoft/
Swin-Transformer, MIT), with LaMamba-Diff's parameter names (``qkv``, ``proj``, ``relative_position_bias_table``).
"""
import math
import numbers
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from visionattn.ops import cross_selective_scan, scan_orders
from visionattn.ops.cache import size_cached
from visionattn.ops.checks import positive_int
from visionattn.ops.reference.selective_scan import project_steps

from .norm import LayerNorm

__all__ = ['SS2D', 'ShiftedWindowAttention', 'continuous_scan_paths', 'selective_scan_flops']


def selective_scan_flops(batch: int, seq_len: int, dim: int, d_state: int, with_d: bool = True,
                         with_z: bool = False) -> int:
    """Multiply-adds of one selective scan as VMamba counts them (``flops_selective_scan_fn``, which LaMamba-Diff's
    ``flops()`` registers for its scan through ``selective_scan_flop_jit``): 9 B L D N, plus B D L for the D skip and
    B D L for the z gate. ``dim`` is the scanned channel count (all K directions together)."""
    flops = 9 * batch * seq_len * dim * d_state
    if with_d:
        flops += batch * dim * seq_len
    if with_z:
        flops += batch * dim * seq_len
    return flops


def continuous_scan_paths(height: int, width: int, device=None) -> torch.Tensor:
    """LaMamba-Diff's four snake scan orders: [4, H*W] flat (row-major) indices, in scan order (model/
    continuous_scan.py ``get_continuous_paths``, its N generalised to H and W; see :func:`visionattn.ops.scan_orders`).
    """
    return scan_orders(height, width, 'continuous', device)


def _ss2d_core(x: torch.Tensor, x_proj_weight: torch.Tensor, dt_projs_weight: torch.Tensor,
               dt_projs_bias: torch.Tensor, A_logs: torch.Tensor, Ds: torch.Tensor, continuous: bool,
               force_fp32: bool) -> torch.Tensor:
    """Four-order selective scan of a channels-last map x [B, H, W, D] -> merged [B, H, W, D] (fp32 when
    ``force_fp32``).

    The official code projects the four reordered copies of x (CrossScan) and merges the four outputs back
    (CrossMerge). Projections act on each position alone, so here they run once over the map in its own order, and
    the scan reads each order's steps from there (:func:`visionattn.ops.cross_selective_scan`): the same values
    without the copies (issue 27).
    """
    batch, height, width, dim = x.shape
    dt_rank = dt_projs_weight.shape[2]
    d_state = A_logs.shape[1]
    # [B, L, K, dt_rank + 2 N]: every order's projections at every position, one matmul
    x_dbl = torch.einsum('bld,kcd->blkc', x.reshape(batch, height * width, dim), x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=3)
    # official forward_type 'v2' runs the scan in fp32 (no 'no32' postfix): its inputs are cast to fp32 (exact, and
    # done by the kernels as they read) and its output and the merge are fp32
    out_dtype = torch.float32 if force_fp32 else x.dtype
    if force_fp32 and x_proj_weight.dtype != torch.float32 and not torch.is_autocast_enabled(x.device.type):
        # a model cast to another dtype (.double(), .bfloat16()): the output in its parameters' dtype, which the
        # out_norm after it has (under autocast the parameters and this output stay fp32, as in the official code)
        out_dtype = x_proj_weight.dtype
    if x.is_meta:  # shapes only (profile.measure): skip the reference's step-by-step loop, which computes nothing
        project_steps(dts, dt_projs_weight)  # counted where the official code runs it (the op may fuse it)
        return torch.empty(x.shape, dtype=out_dtype, device=x.device)
    # dt_proj ('blkr,kdr->blkd') is handed to the op: it runs it as an einsum before the scan, or (the merged
    # kernels) computes the step sizes on chip, reading R values per position and order instead of d_inner
    return cross_selective_scan(x, dts, -torch.exp(A_logs.float()), Bs, Cs, Ds.float(),
                                delta_bias=dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                                orders='continuous' if continuous else 'cross', out_dtype=out_dtype,
                                delta_proj=dt_projs_weight)


# Opaque to torch.fx: the scan orders depend on the input size and the op chooses its backend at run time.
torch.fx.wrap('_ss2d_core')


def _check_map(x: torch.Tensor, channels: int) -> torch.Tensor:
    """x itself, after checking that it is a channels-last map of ``channels`` channels with at least one position
    (else in_proj, permute or the conv failed with their own shape errors)."""
    if x.dim() != 4 or x.shape[-1] != channels:
        raise ValueError(f'SS2D takes a channels-last [B, H, W, C={channels}] map, got shape {list(x.shape)}')
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f'SS2D: the map is empty (shape {list(x.shape)}): H and W must be at least 1')
    return x


torch.fx.wrap('_check_map')  # one leaf of a traced graph: the check runs when the graph runs


class SS2D(nn.Module):
    """VMamba's SS2D (``forward_type='v2'``) on channels-last maps [B, H, W, C].

    ``in_proj`` -> (x, z); x: depthwise conv -> SiLU -> selective scan along four directions (per direction its own
    ``x_proj`` / ``dt_proj`` / A / D) -> merge -> LayerNorm; times SiLU(z); ``out_proj``.

    Args:
        d_model: Input/output channels.
        d_state: State size N of the scan.
        ssm_ratio: Inner width / d_model.
        dt_rank: Rank of the step-size projection; 'auto' = ceil(d_model / 16).
        d_conv: Depthwise conv kernel size (< 2: no conv).
        conv_bias: Bias in the depthwise conv.
        bias: Bias in ``in_proj`` / ``out_proj``.
        dropout: Dropout after ``out_proj``.
        continuous_scan: LaMamba-Diff's snake scan orders instead of VMamba's raster ones.
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        dt_init_floor: Floor of the initial step sizes.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """
    n_directions = 4

    def __init__(self, d_model: int, d_state: int = 16, ssm_ratio: float = 2.0, dt_rank='auto', d_conv: int = 3,
                 conv_bias: bool = True, bias: bool = False, dropout: float = 0., continuous_scan: bool = False,
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        d_model, d_state = positive_int('SS2D', 'd_model', d_model), positive_int('SS2D', 'd_state', d_state)
        d_inner = int(ssm_ratio * d_model)
        if d_inner < 1:
            raise ValueError(f'SS2D: ssm_ratio {ssm_ratio} x d_model {d_model} gives no inner channel')
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == 'auto' else positive_int('SS2D', 'dt_rank', dt_rank)
        if isinstance(d_conv, bool) or not isinstance(d_conv, numbers.Integral) or (d_conv > 1 and d_conv % 2 == 0):
            # an even kernel with padding (d_conv - 1) // 2 shrinks the map by one: the scan then failed on a shape
            raise ValueError(f'SS2D: d_conv={d_conv!r} must be an odd int (a "same" depthwise conv), or < 2 for none')
        d_conv = int(d_conv)
        self.d_inner, self.d_state, self.d_conv = d_inner, d_state, d_conv
        self.continuous_scan = continuous_scan
        k = self.n_directions
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias, **dd)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias,
                                **dd) if d_conv > 1 else nn.Identity()
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, self.dt_rank, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state, device=device, dtype=torch.float32))
        self.Ds = nn.Parameter(torch.empty(k * d_inner, device=device, dtype=torch.float32))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True
        self.out_norm = LayerNorm(d_inner, **dd)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias, **dd)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """The official ``initialize='v0'``: x_proj as nn.Linear's default, dt_proj weights U(+-rank^-0.5), dt biases
        the inverse softplus of log-uniform steps in [dt_min, dt_max], A = -(1..N) (S4D-real), D = 1."""
        if self.A_logs.is_meta:
            return  # meta tensors hold no values (profile.measure builds models on the meta device)
        bound = self.d_inner ** -0.5  # nn.Linear(d_inner, ...) default init: kaiming_uniform(a=sqrt 5)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_projs_weight, -std, std)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias, dtype=torch.float32) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        x, z = self.in_proj(_check_map(x, self.in_proj.in_features)).chunk(2, dim=-1)
        z = self.act(z)
        # the depthwise conv in channels-last, so that the map stays [B, H, W, C] in memory for the scan
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)))
        y = _ss2d_core(x.permute(0, 2, 3, 1), self.x_proj_weight, self.dt_projs_weight, self.dt_projs_bias,
                       self.A_logs, self.Ds, self.continuous_scan, True)
        y = self.out_norm(y).to(z.dtype)
        return self.dropout(self.out_proj(y * z))

    def scan_flops(self, batch: int, height: int, width: int) -> int:
        """Multiply-adds of this module's scan at an H x W input (as VMamba / LaMamba-Diff count it)."""
        return selective_scan_flops(batch, height * width, self.n_directions * self.d_inner, self.d_state)


def _window_sizes(height: int, width: int, window: int, shift: int) -> Tuple[int, int, int, int]:
    # An axis no longer than the window is one window with no shift (Swin's rule, per axis).
    win_h, win_w = min(window, height), min(window, width)
    shift_h = shift if height > window else 0
    shift_w = shift if width > window else 0
    return win_h, win_w, shift_h, shift_w


def _relative_position_index(win_h: int, win_w: int, window: int, device) -> torch.Tensor:
    """[win_h*win_w, win_h*win_w] indices into a (2*window-1)^2 bias table (Swin's layout; windows smaller than
    ``window`` use the table's central entries)."""
    coords = torch.stack(torch.meshgrid(torch.arange(win_h, device=device), torch.arange(win_w, device=device),
                                        indexing='ij')).flatten(1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


def _shift_mask(height: int, width: int, win_h: int, win_w: int, shift_h: int, shift_w: int,
                device) -> torch.Tensor:
    """Swin's SW-MSA mask [num_windows, N, N]: -100 between tokens that the cyclic shift brought from apart."""
    labels = torch.zeros(height, width, device=device)
    count = 0
    for h_slice in (slice(0, height - win_h), slice(height - win_h, height - shift_h), slice(height - shift_h, None)):
        for w_slice in (slice(0, width - win_w), slice(width - win_w, width - shift_w), slice(width - shift_w, None)):
            labels[h_slice, w_slice] = count
            count += 1
    labels = labels.view(height // win_h, win_h, width // win_w, win_w).transpose(1, 2).reshape(-1, win_h * win_w)
    diff = labels[:, None, :] - labels[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.)


def _window_tables(hp: int, wp: int, win_h: int, win_w: int, shift_h: int, shift_w: int, window: int,
                   device) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The flat relative-position index and the shift mask (None without a shift) of a padded map."""
    index = _relative_position_index(win_h, win_w, window, device).flatten()
    mask = _shift_mask(hp, wp, win_h, win_w, shift_h, shift_w, device) if shift_h or shift_w else None
    return index, mask


# Built once per size instead of about 25 small kernels per block on every call (issue 27).
_cached_window_tables = size_cached(64)(_window_tables)


def _shifted_window_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias, proj_weight: torch.Tensor,
                              proj_bias, bias_table: torch.Tensor, num_heads: int, window: int, shift: int,
                              scale: float) -> torch.Tensor:
    """(Shifted-)window multi-head attention of x [B, H, W, C] with a relative position bias -> [B, H, W, C]."""
    if x.dim() != 4 or x.shape[-1] != qkv_weight.shape[1] or x.shape[1] == 0 or x.shape[2] == 0:
        # else a channels-first map or another width failed in the qkv matmul, and an empty map in a modulo by zero
        raise ValueError(f'ShiftedWindowAttention takes a non-empty channels-last [B, H, W, C={qkv_weight.shape[1]}] '
                         f'map, got shape {list(x.shape)}')
    batch, height, width, channels = x.shape
    win_h, win_w, shift_h, shift_w = _window_sizes(height, width, window, shift)
    pad_h, pad_w = (-height) % win_h, (-width) % win_w
    if pad_h or pad_w:  # zero padding at the bottom/right, as Swin's dense-prediction backbones do
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    if shift_h or shift_w:
        x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
    n_tokens = win_h * win_w
    windows = x.view(batch, hp // win_h, win_h, wp // win_w, win_w, channels).transpose(2, 3).reshape(
        -1, n_tokens, channels)
    head_dim = channels // num_heads
    qkv = F.linear(windows, qkv_weight, qkv_bias).view(-1, n_tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    sizes = (hp, wp, win_h, win_w, shift_h, shift_w, window, x.device)
    # under torch.compile the tables are traced into the graph, where they fold to constants
    index, mask = _window_tables(*sizes) if torch.compiler.is_compiling() else _cached_window_tables(*sizes)
    bias = bias_table[index].view(n_tokens, n_tokens, num_heads).permute(2, 0, 1)  # [heads, N, N]
    # SDPA's fused kernels take a mask with a unit-stride last axis (else SDPA falls back to its float32 math path),
    # in q's dtype, broadcastable to [batch * windows, heads, N, N]
    if mask is None:
        bias = bias.to(q.dtype).contiguous().unsqueeze(0)
    else:  # each window's mask, repeated over the batch (as timm's Swin does; cheaper than reordering q, k and v)
        n_win = mask.shape[0]
        bias = (bias + mask[:, None].to(bias.dtype)).to(q.dtype).unsqueeze(0).expand(batch, -1, -1, -1, -1).reshape(
            batch * n_win, num_heads, n_tokens, n_tokens)
    # softmax(q k^T * scale + bias) v in one fused kernel (SDPA), as timm's Swin runs it; the official code scales q
    # before the product: the same up to rounding
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    out = out.transpose(1, 2).reshape(-1, n_tokens, channels)
    out = F.linear(out, proj_weight, proj_bias)
    out = out.view(batch, hp // win_h, wp // win_w, win_h, win_w, channels).transpose(2, 3).reshape(
        batch, hp, wp, channels)
    if shift_h or shift_w:
        out = torch.roll(out, shifts=(shift_h, shift_w), dims=(1, 2))
    return out[:, :height, :width].contiguous() if pad_h or pad_w else out


torch.fx.wrap('_shifted_window_attention')


class ShiftedWindowAttention(nn.Module):
    """Swin's W-MSA / SW-MSA with relative position bias on channels-last maps [B, H, W, C].

    Maps are padded to whole windows; an axis no longer than the window becomes one window and is not shifted.

    Args:
        dim: Channels.
        num_heads: Attention heads (must divide dim).
        window_size: Window side.
        shift_size: Cyclic shift (0 for W-MSA; window_size // 2 on Swin's odd blocks).
        qkv_bias: Bias in the qkv projection.
        qk_scale: Attention scale; default head_dim ** -0.5.
        proj_drop: Dropout after the output projection.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 8, shift_size: int = 0, qkv_bias: bool = True,
                 qk_scale=None, proj_drop: float = 0., device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # a zero or float count failed in Python's modulo or in torch.zeros, naming no argument
        dim, num_heads, window_size = (positive_int('ShiftedWindowAttention', name, value) for name, value in
                                       (('dim', dim), ('num_heads', num_heads), ('window_size', window_size)))
        if dim % num_heads:
            raise ValueError(f'ShiftedWindowAttention: num_heads={num_heads} does not divide dim={dim}')
        if (isinstance(shift_size, bool) or not isinstance(shift_size, numbers.Integral)
                or not 0 <= shift_size < window_size):
            raise ValueError(f'ShiftedWindowAttention: shift_size must be an int in [0, window_size={window_size}), '
                             f'got {shift_size!r}')
        shift_size = int(shift_size)
        self.dim, self.num_heads, self.window_size, self.shift_size = dim, num_heads, window_size, shift_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads, **dd))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        if not self.relative_position_bias_table.is_meta:
            trunc_normal_(self.relative_position_bias_table, std=.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, C] -> [B, H, W, C]."""
        out = _shifted_window_attention(x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
                                        self.relative_position_bias_table, self.num_heads, self.window_size,
                                        self.shift_size, self.scale)
        return self.proj_drop(out)

    def extra_repr(self) -> str:
        return f'dim={self.dim}, window_size={self.window_size}, shift_size={self.shift_size}, heads={self.num_heads}'
