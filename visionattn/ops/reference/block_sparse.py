"""Pure-PyTorch references of routed block-sparse attention and bi-level routing attention (BRA).

These are the oracles the Triton kernels are tested against and the CPU path. They gather the routed K/V blocks
into a dense copy, exactly what the official BiFormer code computes (rayleizhu/BiFormer, ops/bra_legacy.py, MIT):
``torch.gather`` of the top-k regions, then ordinary attention. Their matmuls are the ones the official code runs,
so ``torch.utils.flop_counter`` counts BiFormer's FLOPs from them as its authors did (routing matmul + attention).

Paper: "BiFormer: Vision Transformer with Bi-Level Routing Attention", Zhu et al., CVPR 2023.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ['block_sparse_attention_ref', 'bra_routing', 'bi_level_routing_attention_ref',
           'bi_level_routing_attention_2d_ref']


def block_sparse_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_block_index: torch.Tensor,
                               kv_block_count: Optional[torch.Tensor], q_block_size: int, kv_block_size: int,
                               scale: float, upcast: bool = False, causal: bool = False) -> torch.Tensor:
    """Block-sparse attention by gathering the listed KV blocks (inputs already validated by the public op).

    Args:
        q: [B, H, Nq, Dqk].
        k: [B, H, Nk, Dqk].
        v: [B, H, Nk, Dv].
        kv_block_index: [B, H or 1, Nq / q_block_size, max_kv_blocks], entries in [0, Nk / kv_block_size), no
            duplicates among the first ``count`` entries of a row (the public op removes them).
        kv_block_count: [B, H or 1, Nq / q_block_size] valid entries per row, or None for all.
        q_block_size: Query tokens per block.
        kv_block_size: Key/value tokens per block.
        scale: Multiplier of the logits.
        upcast: Compute in float32 and return in the input dtype.
        causal: Mask keys whose token index exceeds the query's (equal block sizes).

    Returns:
        [B, H, Nq, Dv]; rows of a query block with no listed KV block (or, causal, no earlier key) are zero.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    batch, heads, n_q, d_qk = q.shape
    n_q_blocks, n_kv_blocks = n_q // q_block_size, k.shape[2] // kv_block_size
    max_kv = kv_block_index.shape[-1]
    index = kv_block_index.long().expand(batch, heads, n_q_blocks, max_kv)
    k_blocks = k.reshape(batch, heads, 1, n_kv_blocks, kv_block_size * d_qk).expand(-1, -1, n_q_blocks, -1, -1)
    v_blocks = v.reshape(batch, heads, 1, n_kv_blocks, kv_block_size * v.shape[-1]).expand(-1, -1, n_q_blocks, -1, -1)
    # [B, H, nQ, max_kv, kv_block * D]: the top-k-fold copy the official code makes
    k_sel = torch.gather(k_blocks, 3, index[..., None].expand(-1, -1, -1, -1, k_blocks.shape[-1]))
    v_sel = torch.gather(v_blocks, 3, index[..., None].expand(-1, -1, -1, -1, v_blocks.shape[-1]))
    k_sel = k_sel.reshape(batch, heads, n_q_blocks, max_kv * kv_block_size, d_qk)
    v_sel = v_sel.reshape(batch, heads, n_q_blocks, max_kv * kv_block_size, v.shape[-1])
    q_blocks = q.reshape(batch, heads, n_q_blocks, q_block_size, d_qk)
    logits = (q_blocks * scale) @ k_sel.transpose(-2, -1)  # [B, H, nQ, q_block, max_kv * kv_block]
    if causal:
        key_token = (index[..., None] * kv_block_size + torch.arange(kv_block_size, device=q.device))
        query_token = torch.arange(n_q, device=q.device).reshape(n_q_blocks, q_block_size, 1)
        # [B, H, nQ, q_block, keys] (the key count spelled out: -1 is ambiguous for an empty batch)
        allowed = key_token.reshape(batch, heads, n_q_blocks, 1, max_kv * kv_block_size) <= query_token
        if kv_block_count is not None:
            counted = torch.arange(max_kv, device=q.device) < kv_block_count.long()[..., None]
            counted = counted.expand(batch, heads, n_q_blocks, max_kv).repeat_interleave(kv_block_size, dim=-1)
            allowed = allowed & counted[..., None, :]
        attn = torch.softmax(logits.masked_fill(~allowed, float('-inf')), dim=-1)
        attn = attn.masked_fill(~allowed.any(-1, keepdim=True), 0.0)  # rows with no key: zeros, not NaN
    elif kv_block_count is not None:
        valid = torch.arange(max_kv, device=q.device) < kv_block_count.long()[..., None]  # [B, H|1, nQ, max_kv]
        valid = valid.expand(batch, heads, n_q_blocks, max_kv).repeat_interleave(kv_block_size, dim=-1)
        logits = logits.masked_fill(~valid[..., None, :], float('-inf'))
        attn = torch.softmax(logits, dim=-1)
        attn = attn.masked_fill(~valid.any(-1)[..., None, None], 0.0)  # empty rows: zeros, not NaN
    else:
        attn = torch.softmax(logits, dim=-1)
    out = attn @ v_sel  # [B, H, nQ, q_block, Dv]
    return out.reshape(batch, heads, n_q, v.shape[-1]).to(dtype)


@torch.no_grad()
def bra_routing(q: torch.Tensor, k: torch.Tensor, topk: int, scale: float) -> torch.Tensor:
    """BiFormer's region routing: the top-k key regions of each query region, shared by all heads.

    Region-level queries and keys are the means of q and k over each region's tokens (all channels, detached);
    logits are ``(q_region * scale) @ k_region^T`` and the routing is ``torch.topk`` of them, as in the official
    ``TopkRouting`` with ``param_routing=False, diff_routing=False``. Computed in the inputs' dtype, as there.

    Args:
        q: [B, R, T, Cqk] region-major queries.
        k: [B, R, T, Cqk] region-major keys.
        topk: Key regions per query region.
        scale: The logits' multiplier (does not change the ranking; kept for the official FLOP count).

    Returns:
        Int64 [B, R, topk] key-region indices, best first.
    """
    q_region, k_region = q.detach().mean(2), k.detach().mean(2)  # [B, R, Cqk]
    logits = (q_region * scale) @ k_region.transpose(-2, -1)  # [B, R, R]
    return torch.topk(logits, k=topk, dim=-1).indices


def bi_level_routing_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, topk: int,
                                   scale: float, routing_index: Optional[torch.Tensor] = None,
                                   upcast: bool = False) -> torch.Tensor:
    """BRA between the qkv projection and the output projection, computed as the official code does (gather).

    Args:
        q: [B, R, T, Cqk] region-major queries (Cqk = num_heads * head_dim).
        k: [B, R, T, Cqk].
        v: [B, R, T, Cv].
        num_heads: Attention heads.
        topk: Key regions per query region.
        scale: Logit multiplier (BiFormer passes qk_dim ** -0.5, the full qk dim: the official quirk).
        routing_index: [B, R, topk] precomputed routing (default: ``bra_routing`` on q and k, in their dtype).
        upcast: Attention in float32 (the routing stays in the inputs' dtype: it is the model's discrete choice).

    Returns:
        [B, R, T, Cv].
    """
    batch, regions, tokens, c_qk = q.shape
    c_v = v.shape[-1]
    if routing_index is None:
        routing_index = bra_routing(q, k, topk, scale)
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    topk = routing_index.shape[-1]
    kv = torch.cat([k, v], dim=-1)  # the official code gathers k and v together
    index = routing_index.reshape(batch, regions, topk, 1, 1).expand(-1, -1, -1, tokens, c_qk + c_v)
    kv_sel = torch.gather(kv.reshape(batch, 1, regions, tokens, c_qk + c_v).expand(-1, regions, -1, -1, -1), 2, index)
    k_sel, v_sel = kv_sel.split([c_qk, c_v], dim=-1)  # [B, R, topk, T, C]
    hd_qk, hd_v = c_qk // num_heads, c_v // num_heads
    k_sel = k_sel.reshape(batch * regions, topk * tokens, num_heads, hd_qk).permute(0, 2, 3, 1)
    v_sel = v_sel.reshape(batch * regions, topk * tokens, num_heads, hd_v).transpose(1, 2)
    q_pix = q.reshape(batch * regions, tokens, num_heads, hd_qk).transpose(1, 2)
    attn = torch.softmax((q_pix * scale) @ k_sel, dim=-1)  # [B*R, heads, T, topk*T]
    out = attn @ v_sel  # [B*R, heads, T, hd_v]
    return out.transpose(1, 2).reshape(batch, regions, tokens, c_v).to(dtype)


def bi_level_routing_attention_2d_ref(qkv: torch.Tensor, num_heads: int, n_win: int, topk: int, qk_dim: int,
                                      scale: float, lepe_weight: Optional[torch.Tensor] = None,
                                      lepe_bias: Optional[torch.Tensor] = None,
                                      routing_index: Optional[torch.Tensor] = None, upcast: bool = False
                                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """BRA on an NHWC map as the official module computes it: regions copied out, gather, attention, regions copied
    back, plus the local context enhancement (a depthwise conv of v with zero padding, official ``lepe``).

    Args:
        qkv: [B, H, W, 2 * qk_dim + Cv], the qkv projection's output; H and W multiples of ``n_win``.
        num_heads: Attention heads.
        n_win: Regions per side.
        topk: Key regions per query region.
        qk_dim: Channels of q and of k.
        scale: Logit multiplier (BiFormer: ``qk_dim ** -0.5``).
        lepe_weight: [Cv, 1, k, k] depthwise conv weight (k odd), or None for no LCE.
        lepe_bias: [Cv] its bias, or None.
        routing_index: [B, n_win², topk] precomputed routing (default: ``bra_routing`` in qkv's dtype).
        upcast: Attention in float32 (the routing stays in qkv's dtype).

    Returns:
        ([B, H, W, Cv] in qkv's dtype, the int64 [B, n_win², topk] routing).
    """
    batch, height, width, channels = qkv.shape
    rh, rw = height // n_win, width // n_win
    regions = qkv.reshape(batch, n_win, rh, n_win, rw, channels).transpose(2, 3)
    regions = regions.reshape(batch, n_win * n_win, rh * rw, channels)  # the official region partition (a copy)
    q, k, v = regions.split([qk_dim, qk_dim, channels - 2 * qk_dim], dim=-1)
    if routing_index is None:
        routing_index = bra_routing(q, k, topk, scale)
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    out = bi_level_routing_attention_ref(q, k, v, num_heads, topk, scale, routing_index=routing_index)
    out = out.reshape(batch, n_win, n_win, rh, rw, -1).transpose(2, 3).reshape(batch, height, width, -1)
    if lepe_weight is not None:
        v_map = qkv[..., 2 * qk_dim:].permute(0, 3, 1, 2).to(out.dtype)
        bias = None if lepe_bias is None else lepe_bias.to(out.dtype)
        lepe = F.conv2d(v_map, lepe_weight.to(out.dtype), bias, padding=lepe_weight.shape[-1] // 2,
                        groups=v_map.shape[1])
        out = out + lepe.permute(0, 2, 3, 1)
    return out.to(qkv.dtype), routing_index
