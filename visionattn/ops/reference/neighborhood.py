"""Pure-PyTorch references for visionattn's ops: the oracle the kernels are tested against, and the CPU path.

Neighborhood attention (NATTEN's semantics, see ``neighborhood.py``): for every query the indices of its k^d
neighbours are built once per problem shape (and cached), the neighbours' key/value rows are gathered by index and
attention runs as batched matmuls over exactly those rows. So ``torch.utils.flop_counter`` sees the op's true
multiply-adds, ``B * heads * N * prod(k) * head_dim`` for QK^T and the same for AV, as the NAT papers count them.
"""
import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ['neighborhood_attention_ref', 'axis_windows', 'neighbor_table', 'NeighborTable']

_CHUNK_BYTES = 256 * 2 ** 20  # gathered K (or V) rows per chunk of queries, to bound peak memory


def axis_windows(length: int, kernel: int, dilation: int, stride: int, causal: bool,
                 device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-axis NATTEN windows, in dilation-group coordinates.

    A token at global coordinate ``i`` belongs to dilation group ``g = i % dilation`` at position ``p = i // dilation``
    inside a group of length ``ceil((length - g) / dilation)``. Its keys are the group positions ``[start, end)``.

    Args:
        length: Axis length (at least ``kernel * dilation``, checked by the caller).
        kernel: Window size on this axis (even sizes: ``k//2`` keys before the centre and ``k//2 - 1`` after).
        dilation: Dilation on this axis.
        stride: GNA stride; each query takes the window of its stride group's leader.
        causal: Causal window (keys at or before the query).
        device: Where to build the tables (default the CPU).

    Returns:
        ``start``, ``end``: int64 tensors of shape [dilation, ceil(length / dilation)], indexed by (group, position);
        positions past a group's end hold the last valid entry.
    """
    left = kernel // 2
    groups = []
    for g in range(dilation):
        lg = (length - g + dilation - 1) // dilation
        p = torch.arange(lg, device=device)
        if causal:
            # The stride group's leader is its last member; keys run from leader - k + 1 up to the query itself.
            leader = torch.clamp((p // stride) * stride + stride - 1, max=lg - 1)
            start = torch.clamp(leader - kernel + 1, min=0)
            end = p + 1
        else:
            # Clamped window of the leader (the stride group's middle): every query sees exactly k keys.
            leader = torch.clamp((p // stride) * stride + stride // 2, max=lg - 1)
            start = torch.clamp(leader - left, min=0, max=lg - kernel)
            end = start + kernel
        groups.append((start, end))
    width = (length + dilation - 1) // dilation
    start = torch.stack([torch.cat([s, s[-1:].expand(width - s.numel())]) for s, _ in groups])
    end = torch.stack([torch.cat([e, e[-1:].expand(width - e.numel())]) for _, e in groups])
    return start, end


class NeighborTable:
    """Every query's neighbours over the flattened spatial grid (row-major), built once per problem.

    Attributes:
        index: [N, K] int64, flat token index of each neighbour (K = prod(kernel)); masked slots point at the query.
        valid: [N, K] bool, False for causal slots outside the window; None when every slot is valid.
        bias_index: [N, K] int64, flat index into an rpb of shape [2k0-1, 2k1-1, ...]:
            ``(key - query) / dilation + k - 1`` per axis.
    """

    def __init__(self, shape: Sequence[int], kernel: Sequence[int], dilation: Sequence[int],
                 stride: Sequence[int], causal: Sequence[bool], device: Optional[torch.device] = None):
        index = torch.zeros(1, 1, dtype=torch.long, device=device)
        bias = torch.zeros(1, 1, dtype=torch.long, device=device)
        valid = torch.ones(1, 1, dtype=torch.bool, device=device)
        for length, k, d, s, c in zip(shape, kernel, dilation, stride, causal):
            start, end = axis_windows(length, k, d, s, c, device=device)
            coord = torch.arange(length, device=device)
            g, p = coord % d, coord // d
            pos = start[g, p][:, None] + torch.arange(k, device=device)  # [L, k] group positions of the keys
            ok = pos < end[g, p][:, None]
            key = torch.where(ok, g[:, None] + d * pos, coord[:, None])
            rel = pos - p[:, None] + k - 1
            # Combine with the axes so far: new flat index = old * length + this axis' coordinate.
            index = (index[:, None, :, None] * length + key[None, :, None, :]).flatten(2).flatten(0, 1)
            bias = (bias[:, None, :, None] * (2 * k - 1) + rel[None, :, None, :]).flatten(2).flatten(0, 1)
            valid = (valid[:, None, :, None] & ok[None, :, None, :]).flatten(2).flatten(0, 1)
        self.index = index
        self.bias_index = bias
        # Every query sees k keys per axis unless an axis is causal (then the first queries see fewer: kernel >= 2);
        # decided from the arguments, not by asking the mask, so that Dynamo can trace the construction.
        self.valid = valid if any(causal) else None
        self._on: Dict[torch.device, 'NeighborTable'] = {}

    def to(self, device: torch.device) -> 'NeighborTable':
        """This table with its tensors on ``device`` (cached)."""
        device = torch.device(device)
        if device == self.index.device:
            return self
        if device not in self._on:
            with torch.inference_mode(False):  # cached: a first call under inference_mode must not taint training
                self._on[device] = self._moved(device)
        return self._on[device]

    def _moved(self, device: torch.device) -> 'NeighborTable':
        moved = object.__new__(NeighborTable)
        moved.index, moved.bias_index = self.index.to(device), self.bias_index.to(device)
        moved.valid = None if self.valid is None else self.valid.to(device)
        moved._on = {}
        return moved


@functools.lru_cache(maxsize=64)
def neighbor_table(shape: Tuple[int, ...], kernel: Tuple[int, ...], dilation: Tuple[int, ...],
                   stride: Tuple[int, ...], causal: Tuple[bool, ...]) -> NeighborTable:
    """The cached :class:`NeighborTable` of a problem (on the CPU; ``.to(device)`` caches a copy per device).

    Built outside inference mode: a table first made under ``torch.inference_mode`` would hold inference tensors,
    which autograd refuses to save when the same problem later runs in training.
    """
    with torch.inference_mode(False):
        return NeighborTable(shape, kernel, dilation, stride, causal)


def _tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def neighborhood_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size, dilation=1,
                               stride=1, is_causal=False, rpb: Optional[torch.Tensor] = None,
                               scale: Optional[float] = None, upcast: bool = False) -> torch.Tensor:
    """Neighborhood attention by gathering each query's neighbours (differentiable, any device).

    Arguments are those of :func:`visionattn.ops.neighborhood_attention`, which validates them; this function
    assumes valid input.

    Args:
        q: [B, *spatial, heads, head_dim].
        k: [B, *spatial, heads, head_dim].
        v: [B, *spatial, heads, head_dim_v].
        kernel_size: Window size, int or per-axis tuple.
        dilation: Dilation, int or per-axis tuple.
        stride: GNA stride, int or per-axis tuple.
        is_causal: Causal window, bool or per-axis tuple.
        rpb: Relative positional bias [heads, 2k0-1, ...] or None.
        scale: Multiplier of q (default head_dim ** -0.5).
        upcast: Compute in float32 and return q's dtype.

    Returns:
        [B, *spatial, heads, head_dim_v].
    """
    n_dim = q.dim() - 3
    spatial = tuple(q.shape[1:1 + n_dim])
    batch, heads, dim, dim_v = q.shape[0], q.shape[-2], q.shape[-1], v.shape[-1]
    problem = (spatial, _tuple(kernel_size, n_dim), _tuple(dilation, n_dim), _tuple(stride, n_dim),
               tuple(bool(c) for c in _tuple(is_causal, n_dim)))
    if torch.compiler.is_compiling():
        # Built inside the graph (a few index ops on [N, prod(kernel)] integers per call): tracing the cache lookup
        # would guard the graph on the cache's contents, and torch.compiler.assume_constant_result cannot hold the
        # tables of two problems in one graph (torch 2.14: the second one's .shape breaks the trace).
        table = NeighborTable(*problem, device=q.device)
    else:
        table = neighbor_table(*problem).to(q.device)
    scale = dim ** -0.5 if scale is None else scale
    out_dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
        rpb = None if rpb is None else rpb.float()
    tokens = math.prod(spatial)
    # Half inputs: logits and softmax in fp32 (q * k of magnitude ~100 overflows fp16, and the softmax of a half
    # tensor on the CPU loses the rows); the products with v stay in the input dtype.
    logit_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    # [B, heads, N, d]: heads next to batch so each query's gathered rows are one contiguous [K, d] block.
    qh = (q.to(logit_dtype) * scale).reshape(batch, tokens, heads, dim).transpose(1, 2)
    kh = k.reshape(batch, tokens, heads, dim).transpose(1, 2)
    vh = v.reshape(batch, tokens, heads, dim_v).transpose(1, 2)
    bias = None if rpb is None else rpb.reshape(heads, -1)
    n_keys = table.index.shape[1]
    per_query = batch * heads * n_keys * max(dim, dim_v) * 4
    chunk = max(1, min(tokens, _CHUNK_BYTES // max(per_query, 1)))
    outs = []
    for lo in range(0, tokens, chunk):
        hi = min(tokens, lo + chunk)
        idx = table.index[lo:hi]
        keys = kh.index_select(2, idx.flatten()).view(batch, heads, hi - lo, n_keys, dim)
        vals = vh.index_select(2, idx.flatten()).view(batch, heads, hi - lo, n_keys, dim_v)
        attn = torch.einsum('bhnd,bhnkd->bhnk', qh[:, :, lo:hi], keys.to(logit_dtype))
        if bias is not None:
            attn = attn + bias[:, table.bias_index[lo:hi]].to(attn.dtype)
        if table.valid is not None:
            attn = attn.masked_fill(~table.valid[lo:hi], float('-inf'))
        attn = attn.softmax(dim=-1).to(vals.dtype)
        outs.append(torch.einsum('bhnk,bhnkd->bhnd', attn, vals))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).reshape(batch, *spatial, heads, dim_v).to(out_dtype)
