"""Mixture of block attention: MoBA (causal, 1-D) and VMoBA (video, 1D-2D-3D partitions) on the routed
block-sparse op.

Papers: Lu et al., "MoBA: Mixture of Block Attention for Long-Context LLMs", arXiv:2502.13189 (code:
github.com/MoonshotAI/MoBA, MIT, ``moba/moba_naive.py``); Wu et al., "VMoBA: Mixture-of-Block Attention for Video
Diffusion Models", arXiv:2506.23858 (code: github.com/KwaiVGI/VMoBA, ``src/vmoba.py``, no licence file). This is a
fresh implementation of their block partition, gating and selection rules; the attention itself runs on
:func:`visionattn.ops.block_sparse_attention` (Triton on CUDA), which reads the selected blocks in place.

Steps:

1. partition (VMoBA's ``process_moba_input``): tokens of a (T, H, W) video in row-major order are reordered so
   that each block is contiguous: an int/float ``chunk`` is a 1-D block of ``chunk`` whole frames, ``(ch, cw)`` a
   2-D spatial tile through all T frames, ``(ct, ch, cw)`` a 3-D cube; the layers of a model cycle 1D -> 2D -> 3D;
2. gating: a block is represented by its mean-pooled key; the gate is a dot product with the query (fp32, no scale);
3. selection: top-k, or VMoBA's threshold rule (keep the best blocks until their share of the min-max normalised
   similarity, counting the self block, reaches ``threshold``), per query and head ('query_head') or over all
   queries of a head ('head_global', VMoBA's global block selection), also 'block' and 'overall' as in the
   official code; the query's own block is always attended (MoBA: causally, and future blocks never);
4. attention of each query over its selected blocks, then the partition is undone.

Deviation, on purpose: MoBA and VMoBA select blocks per query *token*; here the selection is made per query
*block* (the query blocks are the same partition blocks as the keys). The gate of a (query block, key block) pair
is the mean-pooled query dotted with the mean-pooled key, which equals the mean over the block's queries of their
token gates. This is what lets a tiled kernel skip whole tiles (every query row of a tile shares its key list);
the dense masked reference :func:`vmoba_attention_ref` uses the same block-level selection, so kernel and reference
agree exactly.
"""
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

from .block_sparse import block_sparse_attention

__all__ = [
    'partition_tokens', 'unpartition_tokens', 'partition_block_size', 'block_gate', 'select_blocks',
    'mask_to_block_index', 'vmoba_attention', 'vmoba_attention_ref', 'moba_attention', 'SELECT_MODES', 'SCOPES',
]

Chunk = Union[int, float, Tuple[int, int], Tuple[int, int, int]]
SELECT_MODES = ('topk', 'threshold')
SCOPES = ('query_head', 'head_global', 'block', 'overall')
_EPS = 1e-6  # the official code's eps in the threshold rule


def _is_int(n) -> bool:
    """A Python or NumPy integer (``numbers.Integral``), not a bool."""
    return isinstance(n, numbers.Integral) and not isinstance(n, bool)


def _check_video(thw: Sequence[int]) -> Tuple[int, int, int]:
    if len(thw) != 3 or not all(_is_int(s) and s >= 1 for s in thw):
        raise ValueError(f'thw must be three positive ints (frames, height, width), got {thw!r}')
    return tuple(int(s) for s in thw)


def partition_block_size(thw: Sequence[int], chunk: Chunk) -> int:
    """Tokens per block of a partition, checking that the partition tiles the video exactly.

    Args:
        thw: (frames, height, width) of the token grid.
        chunk: Frames per 1-D block (int, or float such that ``chunk * H * W`` is a whole divisor of the token
            count, as VMoBA allows), ``(ch, cw)`` for 2-D tiles through all frames, ``(ct, ch, cw)`` for 3-D cubes.
    """
    t, h, w = _check_video(thw)
    if isinstance(chunk, numbers.Real) and not isinstance(chunk, bool):
        tokens = chunk * h * w
        if not math.isfinite(tokens) or chunk <= 0 or tokens != int(tokens) or (t * h * w) % int(tokens):
            raise ValueError(f'1-D chunk of {chunk} frames = {tokens} tokens does not divide the {t * h * w} tokens '
                             f'of a {t}x{h}x{w} video into whole blocks')
        return int(tokens)
    chunk = tuple(chunk)
    if not all(_is_int(c) and c > 0 for c in chunk) or len(chunk) not in (2, 3):
        raise ValueError(f'chunk must be a number of frames, (ch, cw) or (ct, ch, cw) of positive ints, got {chunk!r}')
    chunk = tuple(int(c) for c in chunk)
    if len(chunk) == 2:
        if h % chunk[0] or w % chunk[1]:
            raise ValueError(f'2-D chunk {chunk} does not divide the {h}x{w} frame')
        return t * chunk[0] * chunk[1]
    if t % chunk[0] or h % chunk[1] or w % chunk[2]:
        raise ValueError(f'3-D chunk {chunk} does not divide the {t}x{h}x{w} video')
    return chunk[0] * chunk[1] * chunk[2]


def _token_axis(x: torch.Tensor, dim) -> int:
    """``dim`` as an axis of ``x`` in [0, x.dim()); one out of range is refused (``dim % x.dim()`` wrapped it onto
    another axis, which ran silently when that axis had the token count)."""
    if not _is_int(dim) or not -x.dim() <= dim < x.dim():
        raise ValueError(f'dim={dim!r} is not an axis of x, a {x.dim()}-D tensor of shape {list(x.shape)}')
    return int(dim) % x.dim()


def _grid_shape(thw, chunk):
    """The split of (T, H, W) into (outer, inner) factors per axis, and the permutation that makes blocks."""
    t, h, w = thw
    chunk = tuple(int(c) for c in chunk)
    if len(chunk) == 2:  # (t, nch, ch, ncw, cw) -> (nch, ncw, t, ch, cw)
        ch, cw = chunk
        return (t, h // ch, ch, w // cw, cw), (1, 3, 0, 2, 4)
    ct, ch, cw = chunk  # (nct, ct, nch, ch, ncw, cw) -> (nct, nch, ncw, ct, ch, cw)
    return (t // ct, ct, h // ch, ch, w // cw, cw), (0, 2, 4, 1, 3, 5)


def partition_tokens(x: torch.Tensor, thw: Sequence[int], chunk: Chunk, dim: int = -2) -> Tuple[torch.Tensor, int]:
    """Reorder the tokens of ``x`` (row-major over (T, H, W) along ``dim``) so that each block is contiguous.

    Returns:
        The reordered tensor (``x`` itself for 1-D chunks, which need no reordering) and the block size.
    """
    thw = _check_video(thw)  # Python ints (NumPy ones too)
    block = partition_block_size(thw, chunk)
    dim = _token_axis(x, dim)
    if x.shape[dim] != math.prod(thw):
        raise ValueError(f'x has {x.shape[dim]} tokens along dim {dim}, but a {"x".join(map(str, thw))} video has '
                         f'{math.prod(thw)}')
    if isinstance(chunk, numbers.Real):
        return x, block
    grid, perm = _grid_shape(thw, tuple(chunk))
    lead, tail = x.shape[:dim], x.shape[dim + 1:]
    y = x.reshape(*lead, *grid, *tail)
    order = list(range(dim)) + [dim + p for p in perm] + list(range(dim + len(grid), y.dim()))
    return y.permute(order).reshape(x.shape), block


def unpartition_tokens(x: torch.Tensor, thw: Sequence[int], chunk: Chunk, dim: int = -2) -> torch.Tensor:
    """Inverse of :func:`partition_tokens` (VMoBA's ``process_moba_output``): back to row-major (T, H, W)."""
    thw = _check_video(thw)
    partition_block_size(thw, chunk)
    dim = _token_axis(x, dim)
    if x.shape[dim] != math.prod(thw):
        raise ValueError(f'x has {x.shape[dim]} tokens along dim {dim}, expected {math.prod(thw)}')
    if isinstance(chunk, numbers.Real):
        return x
    grid, perm = _grid_shape(thw, tuple(chunk))
    permuted = [grid[p] for p in perm]
    inverse = [perm.index(i) for i in range(len(perm))]
    lead, tail = x.shape[:dim], x.shape[dim + 1:]
    y = x.reshape(*lead, *permuted, *tail)
    order = list(range(dim)) + [dim + p for p in inverse] + list(range(dim + len(grid), y.dim()))
    return y.permute(order).reshape(x.shape)


@torch.no_grad()
def block_gate(q: torch.Tensor, k: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block-level gate: mean-pooled query block . mean-pooled key block, in fp32 without the softmax scale.

    Args:
        q: [B, H, N, D] in partitioned order.
        k: [B, H, N, D].
        block_size: Tokens per block.

    Returns:
        fp32 [B, H, N / block_size, N / block_size] (query block, key block).
    """
    batch, heads, n, dim = q.shape
    q_mean = q.reshape(batch, heads, n // block_size, block_size, dim).mean(3, dtype=torch.float32)
    k_mean = k.reshape(batch, heads, k.shape[2] // block_size, block_size, dim).mean(3, dtype=torch.float32)
    return q_mean @ k_mean.transpose(-2, -1)


def _scope_layout(scope: str):
    """Dims of the [B, H, Q, C] gate that form one selection group (kept) and the dims reduced over."""
    return {'query_head': ((0, 1, 2), (3,)), 'head_global': ((0, 1), (2, 3)), 'block': ((0, 3), (1, 2)),
            'overall': ((0,), (1, 2, 3))}[scope]


def _to_groups(x: torch.Tensor, scope: str) -> torch.Tensor:
    keep, reduce = _scope_layout(scope)
    y = x.permute(*keep, *reduce)
    return y.reshape(math.prod(y.shape[:len(keep)]), -1)


def _from_groups(flat: torch.Tensor, shape, scope: str) -> torch.Tensor:
    keep, reduce = _scope_layout(scope)
    order = keep + reduce
    y = flat.reshape([shape[i] for i in order])
    return y.permute([order.index(i) for i in range(4)])


def _threshold_rows(gate: torch.Tensor, self_mask: torch.Tensor, valid: torch.Tensor, threshold: float):
    """VMoBA's threshold rule on rows [G, M]: each row keeps its self entries plus its best other entries until
    the cumulative share of the min-max normalised gate (self counted first) reaches ``threshold``."""
    g_max = torch.where(valid, gate, -torch.inf).amax(-1, keepdim=True)
    g_min = torch.where(valid, gate, torch.inf).amin(-1, keepdim=True)
    denom = g_max - g_min
    denom = torch.where(denom <= _EPS, torch.ones_like(denom), denom)
    norm = torch.where(valid, (gate - g_min) / denom, 0.0)
    total = norm.sum(-1, keepdim=True)
    self_share = (norm * self_mask).sum(-1, keepdim=True) / (total + _EPS)
    remain = (threshold - self_share).clamp_min(0.0)
    others = torch.where(self_mask | ~valid, 0.0, norm)
    sorted_vals, order = others.sort(-1, descending=True)
    reached = sorted_vals.cumsum(-1) / (total + _EPS) >= remain
    # first position that reaches the share, inclusive; the official code keeps that one even when the self entries
    # alone already reach it (remain == 0), so at least one other entry is always kept -- matched here
    cutoff = torch.where(reached.any(-1, keepdim=True), reached.float().argmax(-1, keepdim=True), gate.shape[-1] - 1)
    keep_sorted = torch.arange(gate.shape[-1], device=gate.device) <= cutoff
    keep = torch.zeros_like(valid).scatter(-1, order, keep_sorted)
    return valid & (keep | self_mask)


@torch.no_grad()
def select_blocks(gate: torch.Tensor, select_mode: str = 'threshold', topk: Optional[int] = None,
                  threshold: float = 0.25, scope: str = 'query_head', causal: bool = False) -> torch.Tensor:
    """Which key blocks each query block attends to, by VMoBA's rules (MoBA's with ``causal``).

    Args:
        gate: fp32 [B, H, Q, C] block gate (query block i's own block is key block i; Q == C).
        select_mode: 'topk' or 'threshold'.
        topk: Blocks per query block including the self block ('query_head'); per head, ``topk * Q`` (query block,
            key block) pairs ('head_global'); per sample ``topk * H * Q`` ('overall'). Clamped to what exists.
        threshold: Cumulative normalised-similarity share for 'threshold' (VMoBA's ``simsum_threshold``).
        scope: 'query_head', 'head_global', 'block' (threshold only, as in the official code) or 'overall'.
            Groups never span batch samples (the official code packs a batch into one sequence, where
            'head_global' and 'overall' pool the whole batch; with one sample per batch, the case of its videos,
            both agree).
        causal: MoBA: key blocks after the query block are never selected.

    Returns:
        Bool [B, H, Q, C] selection; the self block (diagonal) is always selected.
    """
    if select_mode not in SELECT_MODES:
        raise ValueError(f'select_mode={select_mode!r}; expected one of {SELECT_MODES}')
    if scope not in SCOPES:
        raise ValueError(f'scope={scope!r}; expected one of {SCOPES}')
    if gate.dim() != 4 or gate.shape[2] != gate.shape[3]:
        raise ValueError(f'gate must be [B, H, Q, C] with Q == C (self-attention), got {list(gate.shape)}')
    batch, heads, n_q, n_kv = gate.shape
    eye = torch.eye(n_q, dtype=torch.bool, device=gate.device)
    valid = torch.ones_like(eye) if not causal else torch.ones_like(eye).tril()
    shape = gate.shape
    if select_mode == 'topk':
        if not _is_int(topk) or topk < 1:
            raise ValueError(f"select_mode='topk' needs topk, a positive int; got {topk!r}")
        if scope == 'block':
            raise ValueError("scope='block' is only defined for select_mode='threshold' (as in the official code)")
        # the self block ranks first (the official code adds 1e9 to it), unselectable blocks last
        ranked = gate.masked_fill(eye, torch.inf).masked_fill(~valid, -torch.inf)
        topk = int(topk)
        per_row = {'query_head': topk, 'head_global': topk * n_q, 'overall': topk * heads * n_q}[scope]
        rows = _to_groups(ranked, scope)
        chosen = rows.topk(min(per_row, rows.shape[-1]), dim=-1).indices
        mask = torch.zeros_like(rows, dtype=torch.bool).scatter(-1, chosen, True)
        return _from_groups(mask, shape, scope) & valid
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f'threshold={threshold} must lie in [0, 1]')
    full = lambda m: m.expand(shape)  # noqa: E731
    # float64 for the normalised shares (the official code uses float32): the cumulative share must stay below
    # the target until the last block, by the official eps margin, so that threshold 1.0 keeps every block
    mask = _threshold_rows(_to_groups(gate.double(), scope), _to_groups(full(eye), scope),
                           _to_groups(full(valid), scope), float(threshold))
    return _from_groups(mask, shape, scope)


@torch.no_grad()
def mask_to_block_index(mask: torch.Tensor, trim: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Routing lists for :func:`block_sparse_attention` from a [B, H, Q, C] block mask.

    Args:
        mask: Bool block selection.
        trim: Cut the lists to the longest count (one host sync), which shrinks the routing's sorts and
            temporaries by about the density; without it, no sync and C entries per list.

    Returns:
        int32 [B, H, Q, C or max count] key blocks, selected ones first in ascending order, and int32 [B, H, Q]
        counts.
    """
    index = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
    count = mask.sum(-1, dtype=torch.int32)
    if trim and index.device.type != 'meta' and not torch.compiler.is_compiling():
        index = index[..., :max(1, int(count.max()))].contiguous()
    return index, count


def _check_qkv(q, k, v):
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'expected q, k [B, H, N, D] and v [B, H, N, Dv] of one sequence, got {list(q.shape)}, '
                         f'{list(k.shape)}, {list(v.shape)}')


def vmoba_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, thw: Sequence[int], chunk: Chunk,
                    select_mode: str = 'threshold', topk: Optional[int] = None, threshold: float = 0.25,
                    scope: str = 'query_head', scale: Optional[float] = None, backend: Optional[str] = None,
                    return_mask: bool = False):
    """VMoBA attention of a video's tokens (non-causal), selection per query block (see the module docstring).

    Args:
        q: [B, H, N, D] queries, N = T * H * W tokens in row-major (t, h, w) order.
        k: [B, H, N, D] keys.
        v: [B, H, N, Dv] values.
        thw: (T, H, W) of the token grid.
        chunk: The partition: frames (1-D), (ch, cw) (2-D) or (ct, ch, cw) (3-D).
        select_mode: 'threshold' (VMoBA's default) or 'topk'.
        topk: Blocks per query block for 'topk' (see :func:`select_blocks`).
        threshold: Similarity share for 'threshold' (default 0.25, VMoBA's ``simsum_threshold``).
        scope: 'query_head', 'head_global', 'block' or 'overall'.
        scale: Logit multiplier; default ``D ** -0.5``.
        backend: Backend of the attention: None (auto), 'reference' or 'triton'.
        return_mask: Also return the bool [B, H, Q, C] block selection (in partitioned block order).

    Returns:
        [B, H, N, Dv] in the input token order (and the mask). As in the official code, a selection with no block
        besides the self blocks anywhere in the batch (e.g. top-1) falls back to dense attention.
    """
    _check_qkv(q, k, v)
    (q_p, block), (k_p, _), (v_p, _) = (partition_tokens(t, thw, chunk, dim=2) for t in (q, k, v))
    if q.shape[0] == 0 or q.shape[1] == 0:  # no video or no head: nothing to route (select_blocks needs rows)
        n_blocks = q.shape[2] // block
        mask = torch.zeros((*q.shape[:2], n_blocks, n_blocks), dtype=torch.bool, device=q.device)
        return (v.clone(), mask) if return_mask else v.clone()
    mask = select_blocks(block_gate(q_p, k_p, block), select_mode, topk, threshold, scope)
    # official quirk (src/vmoba.py): when no query selects any block besides its own, it runs dense attention
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    mask = mask | ~(mask & ~eye).any()
    index, count = mask_to_block_index(mask, trim=True)
    out = block_sparse_attention(q_p, k_p, v_p, index, count, block, block, scale=scale, backend=backend)
    out = unpartition_tokens(out, thw, chunk, dim=2)
    return (out, mask) if return_mask else out


def moba_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int, topk: int,
                   scale: Optional[float] = None, backend: Optional[str] = None, return_mask: bool = False):
    """MoBA: causal attention over the top-k past key blocks of each query block plus its own block (causally).

    Args:
        q: [B, H, N, D] queries of a 1-D sequence, N a multiple of ``block_size``.
        k: [B, H, N, D] keys.
        v: [B, H, N, Dv] values.
        block_size: Tokens per block (MoBA's ``moba_chunk_size``).
        topk: Blocks per query block, counting its own (MoBA's ``moba_topk``).
        scale: Logit multiplier; default ``D ** -0.5``.
        backend: None (auto), 'reference' or 'triton'.
        return_mask: Also return the bool [B, H, Q, Q] block selection.

    Returns:
        [B, H, N, Dv] (and the mask).
    """
    _check_qkv(q, k, v)
    if not _is_int(block_size) or block_size < 1 or q.shape[2] % block_size:
        raise ValueError(f'block_size={block_size!r} must be a positive int dividing the {q.shape[2]} tokens')
    block_size = int(block_size)
    if q.shape[0] == 0 or q.shape[1] == 0:  # no sequence or no head: nothing to route (select_blocks needs rows)
        n_blocks = q.shape[2] // block_size
        mask = torch.zeros((*q.shape[:2], n_blocks, n_blocks), dtype=torch.bool, device=q.device)
        return (v.clone(), mask) if return_mask else v.clone()  # the empty output, shaped as v
    mask = select_blocks(block_gate(q, k, block_size), 'topk', topk, scope='query_head', causal=True)
    index, count = mask_to_block_index(mask, trim=True)
    out = block_sparse_attention(q, k, v, index, count, block_size, block_size, scale=scale, backend=backend,
                                 causal=True)
    return (out, mask) if return_mask else out


def vmoba_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor,
                        block_size: int, scale: Optional[float] = None, causal: bool = False,
                        upcast: bool = False) -> torch.Tensor:
    """Dense masked attention over a block selection: the oracle of the block-sparse path (MoBA's naive pattern).

    Args:
        q: [B, H, N, D] in partitioned order (blocks contiguous).
        k: [B, H, N, D].
        v: [B, H, N, Dv].
        block_mask: Bool [B, H or 1, N / block_size, N / block_size] selection.
        block_size: Tokens per block.
        scale: Logit multiplier; default ``D ** -0.5``.
        causal: Also mask keys after the query (token index).
        upcast: Compute in float32 and return in the input dtype.

    Returns:
        [B, H, N, Dv]; a query row with no key gets zeros.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    n = q.shape[2]
    allowed = block_mask.repeat_interleave(block_size, 2).repeat_interleave(block_size, 3)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    logits = (q * scale) @ k.transpose(-2, -1)
    attn = torch.softmax(logits.masked_fill(~allowed, -torch.inf), -1)
    attn = attn.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return (attn @ v).to(dtype)
