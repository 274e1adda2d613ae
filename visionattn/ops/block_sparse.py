"""Routed block-sparse attention and BiFormer's bi-level routing attention (BRA), with backend dispatch.

``block_sparse_attention`` lets each block of queries attend over its own list of key/value blocks (the result of
a routing step); ``bi_level_routing_attention`` is BiFormer's routing (region means, top-k) followed by that op with
one block per region, on region-major q/k/v; ``bi_level_routing_attention_2d`` is the whole of BiFormer's BRA
between its two projections, on the qkv projection's NHWC output, local context enhancement included. On CUDA the
Triton kernels (``triton/block_sparse.py``) read the routed blocks by index and never copy them (nor, for maps, the
regions, q/k/v or the LCE input); elsewhere the PyTorch reference (``reference/block_sparse.py``) gathers them, as
the official code does. Paper: Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention",
CVPR 2023; code: github.com/rayleizhu/BiFormer (MIT).
"""
import numbers
from typing import Optional, Tuple, Union

import torch

from .checks import choose_backend, finite_scale, positive_int
from .reference.block_sparse import (
    bi_level_routing_attention_2d_ref,
    bi_level_routing_attention_ref,
    block_sparse_attention_ref,
    bra_routing,
)

__all__ = ['block_sparse_attention', 'bi_level_routing_attention', 'bi_level_routing_attention_2d', 'bra_routing',
           'dedup_block_index']

MAX_TRITON_HEAD_DIM = 128


def _check_int_tensor(name: str, tensor: torch.Tensor, shape: Tuple[int, ...]) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise TypeError(f'{name} must be an integer tensor, got {getattr(tensor, "dtype", type(tensor))}')
    batch, heads = shape[:2]
    if (tensor.dim() != len(shape) or tensor.shape[0] != batch or tensor.shape[1] not in (1, heads)
            or tuple(tensor.shape[2:]) != tuple(shape[2:])):
        expected = f'[{batch}, {heads} or 1, ' + ', '.join(str(s) for s in shape[2:]) + ']'
        raise ValueError(f'{name} has shape {list(tensor.shape)}, expected {expected}')


def _resolve_scale(op: str, scale, default_dim: int) -> float:
    """``scale`` as a float (default ``default_dim ** -0.5``; see :func:`finite_scale`); a head dim of 0 is
    refused."""
    if default_dim < 1:
        raise ValueError(f'{op}: the q/k head dim is 0 (no channels to attend with)')
    return finite_scale(op, scale, default_dim ** -0.5)


def dedup_block_index(kv_block_index: torch.Tensor, kv_block_count: Optional[torch.Tensor]
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sorted, duplicate-free routing lists with their counts, by tensor ops only (no host sync).

    Entries at or past a row's count are ignored (they may hold anything); a block listed twice counts once.

    Returns:
        int32 index of the same shape (valid entries first, ascending; the rest 0) and int32 counts.
    """
    max_kv = kv_block_index.shape[-1]
    sentinel = torch.iinfo(torch.int64).max
    index = kv_block_index.long()
    if kv_block_count is not None:
        count = kv_block_count.long()
        valid = torch.arange(max_kv, device=index.device) < count[..., None]
        if count.shape[1] != index.shape[1]:
            heads = max(count.shape[1], index.shape[1])
            valid = valid.expand(-1, heads, -1, -1)
            index = index.expand(-1, heads, -1, -1)
        index = torch.where(valid, index, sentinel)
    index = index.sort(-1).values
    repeated = torch.zeros_like(index, dtype=torch.bool)
    repeated[..., 1:] = index[..., 1:] == index[..., :-1]
    index = torch.where(repeated, sentinel, index).sort(-1).values
    valid = index != sentinel
    return torch.where(valid, index, 0).to(torch.int32), valid.sum(-1, dtype=torch.int32)


def _check_ranges(index: torch.Tensor, count: Optional[torch.Tensor], max_kv: int, n_kv_blocks: int) -> None:
    """Host-side range check of the routing as given (before the int32 lists are made, where an int64 entry of
    2**32 + j would wrap to block j); one sync without counts, two with; skipped on meta tensors and while
    compiling."""
    if index.device.type == 'meta' or torch.compiler.is_compiling():
        return
    outside = (index < 0) | (index >= n_kv_blocks)
    if count is not None:
        if bool(((count < 0) | (count > max_kv)).any()):
            raise ValueError(f'kv_block_count must lie in [0, {max_kv}] (max_kv_blocks)')
        outside = outside & (torch.arange(max_kv, device=index.device) < count.long()[..., None])
    if bool(outside.any()):
        raise ValueError(f'kv_block_index has entries outside [0, {n_kv_blocks}) (the number of KV blocks) '
                         'within the first kv_block_count entries of a row')


def _triton_checks(q: torch.Tensor, v: torch.Tensor):
    return [(q.shape[-1] <= MAX_TRITON_HEAD_DIM, f'qk head dim {q.shape[-1]} > {MAX_TRITON_HEAD_DIM}'),
            (v.shape[-1] <= MAX_TRITON_HEAD_DIM, f'v head dim {v.shape[-1]} > {MAX_TRITON_HEAD_DIM}')]


def block_sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_block_index: torch.Tensor,
                           kv_block_count: Optional[torch.Tensor] = None, q_block_size: int = 64,
                           kv_block_size: int = 64, scale: Optional[float] = None,
                           backend: Optional[str] = None, causal: bool = False) -> torch.Tensor:
    """Attention of each query block over the union of its routed key/value blocks.

    Query block i holds query rows ``i * q_block_size ... (i + 1) * q_block_size - 1``; KV block j holds key rows
    ``j * kv_block_size ...``. Row ``kv_block_index[b, h, i]`` lists the KV blocks query block i attends to; the
    softmax runs over all their tokens together. Only the first ``kv_block_count[b, h, i]`` entries of a row are
    read; the rest may hold anything. A KV block listed twice in a row counts once (the lists are deduplicated
    by sorting, on the device). A query block with no KV block gets zeros (and zero gradients).

    Args:
        q: [B, H, Nq, Dqk] queries (any strides).
        k: [B, H, Nk, Dqk] keys.
        v: [B, H, Nk, Dv] values.
        kv_block_index: Integer [B, H or 1, Nq / q_block_size, max_kv_blocks]; a head dim of 1 is shared by all
            heads.
        kv_block_count: Integer [B, H or 1, Nq / q_block_size], valid entries per row in [0, max_kv_blocks];
            None means all.
        q_block_size: Query tokens per block (any positive int, e.g. 49 for 7x7 regions).
        kv_block_size: Key/value tokens per block.
        scale: Logit multiplier; default ``Dqk ** -0.5``.
        backend: None (auto), 'reference' or 'triton'.
        causal: Also mask every key whose token index exceeds the query's (MoBA's causal self block); needs
            ``q_block_size == kv_block_size``. A query row left with no key gets zeros.

    Returns:
        [B, H, Nq, Dv] in q's dtype (from the Triton backend a transposed view of a [B, Nq, H, Dv] tensor).
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f'q, k, v must be 4-D [B, H, N, D], got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}')
    batch, heads, n_q, d_qk = q.shape
    if k.shape[:2] != (batch, heads) or v.shape[:3] != k.shape[:3] or k.shape[-1] != d_qk:
        raise ValueError(f'shapes do not agree: q {list(q.shape)} [B, H, Nq, Dqk], k {list(k.shape)} '
                         f'[B, H, Nk, Dqk], v {list(v.shape)} [B, H, Nk, Dv]')
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise TypeError(f'q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}')
    for name, size in (('q_block_size', q_block_size), ('kv_block_size', kv_block_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f'{name} must be a positive int, got {size!r}')
    if causal and q_block_size != kv_block_size:
        raise ValueError(f'causal=True needs q_block_size == kv_block_size (token indices aligned block by block), '
                         f'got {q_block_size} and {kv_block_size}')
    n_k = k.shape[2]
    if n_q % q_block_size or n_q == 0:
        raise ValueError(f'Nq={n_q} is not a positive multiple of q_block_size={q_block_size}')
    if n_k % kv_block_size or n_k == 0:
        raise ValueError(f'Nk={n_k} is not a positive multiple of kv_block_size={kv_block_size}')
    n_q_blocks, n_kv_blocks = n_q // q_block_size, n_k // kv_block_size
    if kv_block_index.dim() != 4 or kv_block_index.shape[-1] < 1:
        raise ValueError(f'kv_block_index must be [B, H or 1, n_q_blocks, max_kv_blocks >= 1], '
                         f'got {list(kv_block_index.shape)}')
    max_kv = kv_block_index.shape[-1]
    _check_int_tensor('kv_block_index', kv_block_index, (batch, heads, n_q_blocks, max_kv))
    if kv_block_count is not None:
        _check_int_tensor('kv_block_count', kv_block_count, (batch, heads, n_q_blocks))
    for name, t in (('k', k), ('v', v), ('kv_block_index', kv_block_index), ('kv_block_count', kv_block_count)):
        if t is not None and t.device != q.device:
            raise ValueError(f'{name} is on {t.device}, q on {q.device}')
    _check_ranges(kv_block_index, kv_block_count, max_kv, n_kv_blocks)
    index, count = dedup_block_index(kv_block_index, kv_block_count)
    scale = _resolve_scale('block_sparse_attention', scale, d_qk)
    chosen = choose_backend('block_sparse_attention', backend, (q, k, v, index), _triton_checks(q, v))
    if chosen == 'reference':
        return block_sparse_attention_ref(q, k, v, index, count, q_block_size, kv_block_size, scale, causal=causal)
    from .triton.block_sparse import block_sparse_attention_triton
    return block_sparse_attention_triton(q, k, v, index, count, q_block_size, kv_block_size, scale,
                                         causal=causal).transpose(1, 2)


def bi_level_routing_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, topk: int,
                               scale: Optional[float] = None, backend: Optional[str] = None,
                               return_routing: bool = False
                               ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """BiFormer's bi-level routing attention, between the qkv projection and the output projection.

    Region-level queries/keys are the means of q and k over each region (all channels, detached); each query
    region keeps the ``topk`` key regions of highest ``(q_region * scale) @ k_region^T`` (``torch.topk``, shared by
    all heads; the routing weights are not applied, the official ``mul_weight='none'``; the Triton backend computes
    means, affinities and top-k in one kernel per image, in the inputs' dtype as PyTorch does). Each head then runs
    token-to-token attention of a query region's T tokens over the ``topk * T`` tokens of its routed regions.
    The local-context conv (lepe) and the projections belong to the module.

    Args:
        q: [B, R, T, Cqk] region-major queries (R regions of T tokens; Cqk = num_heads * head_dim).
        k: [B, R, T, Cqk] keys.
        v: [B, R, T, Cv] values.
        num_heads: Heads; must divide Cqk and Cv.
        topk: Routed key regions per query region, in [1, R]. (BiFormer's ``topk=-2`` stage runs plain global
            attention instead and never reaches this op.)
        scale: Logit multiplier for routing and attention; default ``Cqk ** -0.5``: the full qk dim, not the head
            dim, which is the official quirk (BiLevelRoutingAttention's ``qk_dim ** -0.5``).
        backend: None (auto), 'reference' or 'triton'.
        return_routing: Also return the routing index (for attention-map visualisation).

    Returns:
        [B, R, T, Cv], and with ``return_routing`` the int64 [B, R, topk] key regions of each query region.
    """
    if q.dim() != 4 or q.shape != k.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'expected q, k [B, R, T, Cqk] and v [B, R, T, Cv], got {list(q.shape)}, {list(k.shape)}, '
                         f'{list(v.shape)}')
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise TypeError(f'q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}')
    batch, regions, tokens, c_qk = q.shape
    c_v = v.shape[-1]
    num_heads = positive_int('bi_level_routing_attention', 'num_heads', num_heads)
    if tokens == 0:
        raise ValueError(f'bi_level_routing_attention: the regions hold no tokens (q is {list(q.shape)})')
    if c_qk % num_heads or c_v % num_heads:
        raise ValueError(f'num_heads={num_heads} must divide the qk channels {c_qk} and the v channels {c_v}')
    topk = _count('topk', topk, regions)
    scale = _resolve_scale('bi_level_routing_attention', scale, c_qk)
    head_q, head_v = c_qk // num_heads, c_v // num_heads
    chosen = choose_backend('bi_level_routing_attention', backend, (q, k, v), _head_checks(head_q, head_v))
    if chosen == 'reference':
        routing = bra_routing(q, k, topk, scale)
        out = bi_level_routing_attention_ref(q, k, v, num_heads, topk, scale, routing_index=routing)
        return (out, routing) if return_routing else out
    from .triton.block_sparse import bra_regions_triton
    return bra_regions_triton(q, k, v, num_heads, topk, scale, return_routing=return_routing)


def _count(name: str, value, regions: int) -> int:
    """``topk`` as a Python int in [1, regions]; a NumPy integer is the count it holds (it was refused as not an int,
    while ``n_win`` and ``num_heads`` took it), a float or bool is refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= regions:
        raise ValueError(f'{name}={value!r} must be an int in [1, {regions}] (the number of regions)')
    return int(value)


def _head_checks(head_q: int, head_v: int):
    return [(head_q <= MAX_TRITON_HEAD_DIM, '' if head_q <= MAX_TRITON_HEAD_DIM else
             f'qk head dim {head_q} > {MAX_TRITON_HEAD_DIM}'),
            (head_v <= MAX_TRITON_HEAD_DIM, '' if head_v <= MAX_TRITON_HEAD_DIM else
             f'v head dim {head_v} > {MAX_TRITON_HEAD_DIM}')]


def bi_level_routing_attention_2d(qkv: torch.Tensor, num_heads: int, n_win: int, topk: int,
                                  qk_dim: Optional[int] = None, scale: Optional[float] = None,
                                  lepe_weight: Optional[torch.Tensor] = None, lepe_bias: Optional[torch.Tensor] = None,
                                  backend: Optional[str] = None, return_routing: bool = False
                                  ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """BiFormer's BRA on an NHWC map, from the qkv projection's output to the output projection's input.

    The map is cut into ``n_win`` x ``n_win`` regions (row-major; tokens row-major within a region). Region-level
    queries/keys are the means of q and k over each region (detached); each query region keeps the ``topk`` key
    regions of highest ``(q_region * scale) @ k_region^T`` (shared by all heads, routing weights unused, as the
    official ``mul_weight='none'``), and each head runs token-to-token attention of the region's tokens over its
    routed regions' tokens. The local context enhancement (official ``lepe``), a depthwise conv of v on the map with
    zero padding, is added. The Triton backend reads q, k and v from ``qkv`` in place, computes the routing in one
    kernel per image and the LCE inside the attention kernels, so nothing is copied; the reference computes it as
    the official module does.

    Args:
        qkv: [B, H, W, 2 * qk_dim + Cv], the projection's output (unit channel stride; H and W multiples of
            ``n_win``: pad first).
        num_heads: Heads; must divide qk_dim and Cv.
        n_win: Regions per side.
        topk: Routed key regions per query region, in [1, n_win²].
        qk_dim: Channels of q and of k (default: a third of qkv's channels).
        scale: Logit multiplier for routing and attention; default ``qk_dim ** -0.5`` (the full qk dim, not the
            head dim: the official quirk).
        lepe_weight: [Cv, 1, k, k] depthwise conv weight (k odd, padding k // 2), or None for no LCE.
        lepe_bias: [Cv] its bias, or None.
        backend: None (auto), 'reference' or 'triton'.
        return_routing: Also return the routing (for attention-map plots).

    Returns:
        [B, H, W, Cv] in qkv's dtype, and with ``return_routing`` the int64 [B, n_win², topk] key regions of each
        query region (regions row by row, best first).
    """
    if qkv.dim() != 4 or not qkv.dtype.is_floating_point:
        raise ValueError(f'qkv must be a floating [B, H, W, C] map, got {qkv.dtype} {list(qkv.shape)}')
    batch, height, width, channels = qkv.shape
    op = 'bi_level_routing_attention_2d'
    num_heads, n_win = positive_int(op, 'num_heads', num_heads), positive_int(op, 'n_win', n_win)
    qk_dim = channels // 3 if qk_dim is None else positive_int(op, 'qk_dim', qk_dim)
    c_v = channels - 2 * qk_dim
    if qk_dim < 1 or c_v < 1:
        raise ValueError(f'qkv has {channels} channels, too few for q and k of {qk_dim} and a v')
    if qk_dim % num_heads or c_v % num_heads:
        raise ValueError(f'num_heads={num_heads} must divide the qk channels {qk_dim} and the v channels {c_v}')
    if height % n_win or width % n_win or height == 0 or width == 0:
        raise ValueError(f'the map is {height}x{width}, not a positive multiple of n_win={n_win} per side')
    topk = _count('topk', topk, n_win * n_win)
    if lepe_weight is not None:
        size = lepe_weight.shape[-1]
        if lepe_weight.shape != (c_v, 1, size, size) or size % 2 == 0:
            raise ValueError(f'lepe_weight must be [{c_v}, 1, k, k] with k odd, got {list(lepe_weight.shape)}')
        if lepe_bias is not None and lepe_bias.shape != (c_v,):
            raise ValueError(f'lepe_bias must be [{c_v}], got {list(lepe_bias.shape)}')
    elif lepe_bias is not None:  # a bias with no conv would be dropped without a word
        raise ValueError('lepe_bias is given without lepe_weight (the bias belongs to the LePE depthwise conv)')
    scale = _resolve_scale('bi_level_routing_attention_2d', scale, qk_dim)
    if batch == 0:
        # No image: the empty output (v's channels of qkv, a function of qkv for autograd) and an empty routing.
        out = qkv[..., 2 * qk_dim:].clone()
        routing = torch.empty(0, n_win * n_win, topk, dtype=torch.long, device=qkv.device)
        return (out, routing) if return_routing else out
    chosen = choose_backend('bi_level_routing_attention', backend, (qkv, lepe_weight, lepe_bias),
                            _head_checks(qk_dim // num_heads, c_v // num_heads))
    if chosen == 'reference':
        out, routing = bi_level_routing_attention_2d_ref(qkv, num_heads, n_win, topk, qk_dim, scale, lepe_weight,
                                                         lepe_bias)
        return (out, routing) if return_routing else out
    from .triton.block_sparse import bra_map_triton
    return bra_map_triton(qkv, num_heads, n_win, topk, qk_dim, scale, lepe_weight, lepe_bias, return_routing)
