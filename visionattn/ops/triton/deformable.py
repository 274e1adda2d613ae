"""Triton kernels for multi-scale deformable attention (Deformable DETR, arXiv 2010.04159): forward, backward, custom
ops, autograd.

One program owns a block of queries of one (batch, head) pair and walks the levels and sampling points. Each sample
gathers the four bilinear corners — rows of ``head_dim`` contiguous channels of value [B, S, heads, Dh] — and adds
them, weighted, into an fp32 [queries, head_dim] accumulator; corners outside the map are masked (zero padding, as
``grid_sample(align_corners=False)``). The backward pass recomputes the corners: the gradients of the sampling
locations and attention weights of a query belong to one program and are stored directly; value's gradient is
scattered to the corners with fp32 atomic adds (so it is not bitwise deterministic on a GPU, as in the CUDA kernels
of Deformable DETR and mmcv), then cast to value's dtype.

Host path: the launch configuration is computed once per call signature (``_plan``), and later calls launch the
compiled kernel directly (``launch.Kernel``, without the JIT's per-call argument binding); the forward allocates only
its output and the backward only the gradients (value's fp32 accumulator is the one zero-fill: no program owns a value
row), so a forward is one launch and a backward two (three for a half-precision value, whose gradient is cast). In
eager mode the kernels run under a plain ``autograd.Function`` that saves the contiguous inputs it launched with (the
backward makes no second copy), and a call without autograd skips the Function; under ``torch.compile`` they run
through the ``visionattn::ms_deform_attn_*`` custom ops, whose fake implementations let ``fullgraph=True`` trace
through.
"""
from typing import Dict, List

import torch
import triton
import triton.language as tl

from ..checks import first_order_only
from ._common import TileConfig, cached_plan, flat_grid
from .launch import Kernel
from .launch import aligned as _aligned

# Elements of one [queries, head_dim] tile; larger tiles mean fewer programs but more registers.
TILE_ELEMENTS = 1024
# Overrides for tests (larger blocks are faster in the interpreter) and benchmark sweeps, by TileConfig field:
# block_m (queries per tile) and num_warps; block_n is always the whole head dim.
TILE_OVERRIDES: dict = {}


@triton.jit
def _bilinear_setup(LOC, lp, q_ok, height, width):
    """Top-left corner (integer) and fractional offsets of the sample at the (query, level, point) index ``lp``."""
    loc_x = tl.load(LOC + 2 * lp, mask=q_ok, other=0.).to(tl.float32)
    loc_y = tl.load(LOC + 2 * lp + 1, mask=q_ok, other=0.).to(tl.float32)
    w_f = width.to(tl.float32)
    h_f = height.to(tl.float32)
    # grid_sample(align_corners=False): pixel coordinate = loc * size - 0.5
    x = loc_x * w_f - 0.5
    y = loc_y * h_f - 0.5
    # far outside the map no corner is in range; clamping keeps the integer conversion defined
    x = tl.minimum(tl.maximum(x, -2.0), w_f + 1.0)
    y = tl.minimum(tl.maximum(y, -2.0), h_f + 1.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    # a NaN or infinite location gives NaN weights, as grid_sample does, instead of a clamped (finite) sample:
    # loc - loc is 0 for finite values and NaN otherwise
    poison = (loc_x - loc_x) + (loc_y - loc_y)
    return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f + poison, y - y0f + poison


@triton.jit
def _corner(xi, yi, height, width, start, q_ok, d, d_ok, row_stride):
    """Element offsets (from the (batch, head) base) of a corner's value row, and its mask."""
    ok = q_ok & (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
    pos = start + yi * width + xi
    offsets = pos[:, None].to(tl.int64) * row_stride + d[None, :]
    return offsets, ok[:, None] & d_ok[None, :]


@triton.jit
def _msda_fwd_kernel(VALUE, SHAPES, STARTS, LOC, ATTN, OUT, n_pos, n_queries, n_heads, head_dim,
                     NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.static_assert(BLOCK_Q & (BLOCK_Q - 1) == 0, 'BLOCK_Q must be a power of two')
    tl.static_assert(BLOCK_D & (BLOCK_D - 1) == 0, 'BLOCK_D must be a power of two')
    # one flat grid axis, query blocks fastest (batch * heads can outgrow CUDA's 65535 on the second axis)
    q_blocks = tl.cdiv(n_queries, BLOCK_Q)
    q_block = tl.program_id(0) % q_blocks
    bh = tl.program_id(0) // q_blocks
    b = (bh // n_heads).to(tl.int64)
    h = bh % n_heads
    q = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < n_queries
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    row_stride = n_heads * head_dim
    v_base = VALUE + b * n_pos * row_stride + h * head_dim
    # flat index of (b, q, h, level 0, point 0) in [B, Q, heads, L, P]
    lp_base = ((b * n_queries + q) * n_heads + h) * (NUM_LEVELS * NUM_POINTS)
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for lvl in range(NUM_LEVELS):
        height = tl.load(SHAPES + 2 * lvl).to(tl.int32)
        width = tl.load(SHAPES + 2 * lvl + 1).to(tl.int32)
        start = tl.load(STARTS + lvl).to(tl.int32)
        for p in range(NUM_POINTS):
            lp = lp_base + lvl * NUM_POINTS + p
            x0, y0, fx, fy = _bilinear_setup(LOC, lp, q_ok, height, width)
            attn = tl.load(ATTN + lp, mask=q_ok, other=0.).to(tl.float32)
            o00, m00 = _corner(x0, y0, height, width, start, q_ok, d, d_ok, row_stride)
            o01, m01 = _corner(x0 + 1, y0, height, width, start, q_ok, d, d_ok, row_stride)
            o10, m10 = _corner(x0, y0 + 1, height, width, start, q_ok, d, d_ok, row_stride)
            o11, m11 = _corner(x0 + 1, y0 + 1, height, width, start, q_ok, d, d_ok, row_stride)
            v00 = tl.load(v_base + o00, mask=m00, other=0.).to(tl.float32)
            v01 = tl.load(v_base + o01, mask=m01, other=0.).to(tl.float32)
            v10 = tl.load(v_base + o10, mask=m10, other=0.).to(tl.float32)
            v11 = tl.load(v_base + o11, mask=m11, other=0.).to(tl.float32)
            gx = 1. - fx
            gy = 1. - fy
            sampled = ((gx * gy)[:, None] * v00 + (fx * gy)[:, None] * v01 + (gx * fy)[:, None] * v10
                       + (fx * fy)[:, None] * v11)
            acc += attn[:, None] * sampled
    out_offsets = ((b * n_queries + q[:, None]) * n_heads + h) * head_dim + d[None, :]
    tl.store(OUT + out_offsets, acc.to(OUT.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.jit
def _msda_bwd_kernel(VALUE, SHAPES, STARTS, LOC, ATTN, DOUT, DVALUE, DLOC, DATTN, n_pos, n_queries, n_heads,
                     head_dim, NUM_LEVELS: tl.constexpr, NUM_POINTS: tl.constexpr,
                     BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.static_assert(BLOCK_Q & (BLOCK_Q - 1) == 0, 'BLOCK_Q must be a power of two')
    tl.static_assert(BLOCK_D & (BLOCK_D - 1) == 0, 'BLOCK_D must be a power of two')
    # one flat grid axis, query blocks fastest (batch * heads can outgrow CUDA's 65535 on the second axis)
    q_blocks = tl.cdiv(n_queries, BLOCK_Q)
    q_block = tl.program_id(0) % q_blocks
    bh = tl.program_id(0) // q_blocks
    b = (bh // n_heads).to(tl.int64)
    h = bh % n_heads
    q = q_block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = q < n_queries
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    qd_ok = q_ok[:, None] & d_ok[None, :]
    row_stride = n_heads * head_dim
    base = b * n_pos * row_stride + h * head_dim
    v_base = VALUE + base
    dv_base = DVALUE + base
    lp_base = ((b * n_queries + q) * n_heads + h) * (NUM_LEVELS * NUM_POINTS)
    out_offsets = ((b * n_queries + q[:, None]) * n_heads + h) * head_dim + d[None, :]
    dout = tl.load(DOUT + out_offsets, mask=qd_ok, other=0.).to(tl.float32)
    for lvl in range(NUM_LEVELS):
        height = tl.load(SHAPES + 2 * lvl).to(tl.int32)
        width = tl.load(SHAPES + 2 * lvl + 1).to(tl.int32)
        start = tl.load(STARTS + lvl).to(tl.int32)
        for p in range(NUM_POINTS):
            lp = lp_base + lvl * NUM_POINTS + p
            x0, y0, fx, fy = _bilinear_setup(LOC, lp, q_ok, height, width)
            attn = tl.load(ATTN + lp, mask=q_ok, other=0.).to(tl.float32)
            o00, m00 = _corner(x0, y0, height, width, start, q_ok, d, d_ok, row_stride)
            o01, m01 = _corner(x0 + 1, y0, height, width, start, q_ok, d, d_ok, row_stride)
            o10, m10 = _corner(x0, y0 + 1, height, width, start, q_ok, d, d_ok, row_stride)
            o11, m11 = _corner(x0 + 1, y0 + 1, height, width, start, q_ok, d, d_ok, row_stride)
            v00 = tl.load(v_base + o00, mask=m00, other=0.).to(tl.float32)
            v01 = tl.load(v_base + o01, mask=m01, other=0.).to(tl.float32)
            v10 = tl.load(v_base + o10, mask=m10, other=0.).to(tl.float32)
            v11 = tl.load(v_base + o11, mask=m11, other=0.).to(tl.float32)
            gx = 1. - fx
            gy = 1. - fy
            sampled = ((gx * gy)[:, None] * v00 + (fx * gy)[:, None] * v01 + (gx * fy)[:, None] * v10
                       + (fx * fy)[:, None] * v11)
            tl.store(DATTN + lp, tl.sum(dout * sampled, axis=1).to(DATTN.dtype.element_ty), mask=q_ok)
            weighted = attn[:, None] * dout
            # d sampled / d fx and d fy, then d fx / d loc_x = W and d fy / d loc_y = H
            grad_fx = tl.sum(weighted * (gy[:, None] * (v01 - v00) + fy[:, None] * (v11 - v10)), axis=1)
            grad_fy = tl.sum(weighted * (gx[:, None] * (v10 - v00) + fx[:, None] * (v11 - v01)), axis=1)
            tl.store(DLOC + 2 * lp, (grad_fx * width.to(tl.float32)).to(DLOC.dtype.element_ty), mask=q_ok)
            tl.store(DLOC + 2 * lp + 1, (grad_fy * height.to(tl.float32)).to(DLOC.dtype.element_ty), mask=q_ok)
            # value's gradient: corners are shared between queries, heads of other programs never touch them
            tl.atomic_add(dv_base + o00, (gx * gy)[:, None] * weighted, mask=m00)
            tl.atomic_add(dv_base + o01, (fx * gy)[:, None] * weighted, mask=m01)
            tl.atomic_add(dv_base + o10, (gx * fy)[:, None] * weighted, mask=m10)
            tl.atomic_add(dv_base + o11, (fx * fy)[:, None] * weighted, mask=m11)


# ---------------------------------------------------------------------------------------------------------------
# launchers


class _Plan:
    """Grid, tile (block_m queries by block_n channels, num_warps; num_stages left to Triton) and launch slot of one
    call signature (shapes, dtypes, alignments: everything the JIT specialises on)."""

    def __init__(self, batch: int, queries: int, heads: int, head_dim: int):
        # the whole head dim (block_n), as many queries as fit the tile (block_m)
        block_d = max(2, triton.next_power_of_2(head_dim))
        block_q = TILE_OVERRIDES.get('block_m', max(1, TILE_ELEMENTS // block_d))
        block_q = max(1, min(block_q, triton.next_power_of_2(queries)))
        num_warps = TILE_OVERRIDES.get('num_warps', 4 if block_q * block_d >= 1024 else 2)
        self.tiles = TileConfig(block_q, block_d, num_warps)
        self.grid = flat_grid(triton.cdiv(queries, block_q) * batch * heads, 'multi_scale_deformable_attention')
        self.slot = [None, None]


_PLANS: Dict[tuple, _Plan] = {}
_FWD = Kernel(_msda_fwd_kernel)
_BWD = Kernel(_msda_bwd_kernel)


def _plan(kind: str, value: torch.Tensor, loc: torch.Tensor, tensors) -> _Plan:
    # the tensors are contiguous: shapes, dtypes and alignments decide how the JIT specialises
    key = (kind, tuple((t.shape, t.dtype, _aligned(t)) for t in tensors), value.device,
           tuple(sorted(TILE_OVERRIDES.items())) if TILE_OVERRIDES else ())
    batch, _, heads, head_dim = value.shape
    return cached_plan(_PLANS, key, lambda: _Plan(batch, loc.shape[1], heads, head_dim))


def _prepare(value, spatial_shapes, level_start_index, loc, attn):
    # .contiguous() returns the tensor itself when it already is (the usual case: projections' outputs)
    return (value.contiguous(), spatial_shapes.contiguous(), level_start_index.contiguous(), loc.contiguous(),
            attn.contiguous())


def _launch_fwd(value, spatial_shapes, level_start_index, loc, attn):
    """The forward on contiguous inputs: one launch."""
    batch, n_pos, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = loc.shape
    out = value.new_empty((batch, queries, heads * head_dim))  # every element stored by the kernel
    args = (value, spatial_shapes, level_start_index, loc, attn, out)
    plan = _plan('fwd', value, loc, args)
    _FWD.launch(plan.slot, plan.grid, (*args, n_pos, queries, heads, head_dim),
                dict(NUM_LEVELS=levels, NUM_POINTS=points, BLOCK_Q=plan.tiles.block_m, BLOCK_D=plan.tiles.block_n),
                plan.tiles.num_warps, plan.tiles.num_stages)
    return out


def _launch_bwd(dout, value, spatial_shapes, level_start_index, loc, attn):
    """The backward on contiguous inputs: a zero-fill of value's fp32 accumulator, one kernel and, for a
    half-precision value, one cast."""
    batch, n_pos, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = loc.shape
    # corners are scattered to with atomics and a value row may be sampled by no query: zeros, in fp32
    dvalue = torch.zeros(value.shape, device=value.device, dtype=torch.float32)
    dloc, dattn = torch.empty_like(loc), torch.empty_like(attn)  # one program owns each: stored, not added
    args = (value, spatial_shapes, level_start_index, loc, attn, dout, dvalue, dloc, dattn)
    plan = _plan('bwd', value, loc, args)
    _BWD.launch(plan.slot, plan.grid, (*args, n_pos, queries, heads, head_dim),
                dict(NUM_LEVELS=levels, NUM_POINTS=points, BLOCK_Q=plan.tiles.block_m, BLOCK_D=plan.tiles.block_n),
                plan.tiles.num_warps, plan.tiles.num_stages)
    return dvalue.to(value.dtype), dloc, dattn


def _fwd(value, spatial_shapes, level_start_index, loc, attn):
    return _launch_fwd(*_prepare(value, spatial_shapes, level_start_index, loc, attn))


def _bwd(dout, value, spatial_shapes, level_start_index, loc, attn):
    return _launch_bwd(dout.contiguous(), *_prepare(value, spatial_shapes, level_start_index, loc, attn))


# ---------------------------------------------------------------------------------------------------------------
# custom ops (opaque to FX and torch.compile) and autograd


@torch.library.custom_op('visionattn::ms_deform_attn_fwd', mutates_args=())
def _msda_fwd_op(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                 sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    return _fwd(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_msda_fwd_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch, _, heads, head_dim = value.shape
    return value.new_empty((batch, sampling_locations.shape[1], heads * head_dim))


@torch.library.custom_op('visionattn::ms_deform_attn_bwd', mutates_args=())
def _msda_bwd_op(dout: torch.Tensor, value: torch.Tensor, spatial_shapes: torch.Tensor,
                 level_start_index: torch.Tensor, sampling_locations: torch.Tensor,
                 attention_weights: torch.Tensor) -> List[torch.Tensor]:
    return list(_bwd(dout, value, spatial_shapes, level_start_index, sampling_locations, attention_weights))


@_msda_bwd_op.register_fake
def _(dout, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return [torch.empty_like(value, memory_format=torch.contiguous_format),
            torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
            torch.empty_like(attention_weights, memory_format=torch.contiguous_format)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _op_backward(ctx, dout):
    dvalue, dloc, dattn = _msda_bwd_op(dout, *ctx.saved_tensors)
    return dvalue, None, None, dloc, dattn


_msda_fwd_op.register_autograd(_op_backward, setup_context=_setup_context)


class _MSDeformAttnFn(torch.autograd.Function):
    """Eager autograd: saves the contiguous tensors it launched with, so the backward copies nothing again."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, loc, attn):
        prepared = _prepare(value, spatial_shapes, level_start_index, loc, attn)
        ctx.save_for_backward(*prepared)
        return _launch_fwd(*prepared)

    @staticmethod
    @first_order_only('ms_deform_attn')
    def backward(ctx, dout):
        dvalue, dloc, dattn = _launch_bwd(dout.contiguous(), *ctx.saved_tensors)
        return dvalue, None, None, dloc, dattn


def ms_deform_attn_triton(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention on the Triton kernels (inputs validated by the caller).

    Returns:
        [B, Q, heads * Dh] in value's dtype; gradients for value, sampling_locations and attention_weights, each in
        its input's dtype.
    """
    if torch.compiler.is_compiling():  # opaque to the compiler through the custom op
        return _msda_fwd_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if not (torch.is_grad_enabled() and (value.requires_grad or sampling_locations.requires_grad
                                         or attention_weights.requires_grad)):
        return _fwd(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)  # no autograd
    # eager training: the same kernels through a plain autograd.Function (less host time than the custom-op dispatch)
    return _MSDeformAttnFn.apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
