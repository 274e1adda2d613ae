"""Pure-PyTorch multi-scale deformable attention (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159).

The oracle for the Triton kernels (``triton/deformable.py``) and the CPU path. The semantics are those of Deformable
DETR's ``ms_deform_attn_core_pytorch`` (github.com/fundamentalvision/Deformable-DETR, Apache-2.0) and mmcv's
``multi_scale_deformable_attn_pytorch`` (Apache-2.0): each level is bilinearly sampled with
``grid_sample(align_corners=False, padding_mode='zeros')`` — a normalised location ``(x, y)`` in [0, 1] is the pixel
coordinate ``(x * W - 0.5, y * H - 0.5)`` and corners outside the map read zero — and the samples are summed with the
attention weights. Written afresh here.
"""
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ['ms_deform_attn_ref', 'level_sizes']


def level_sizes(spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]]) -> List[List[int]]:
    """``spatial_shapes`` [L, 2] (H, W) as a Python list of ``[H, W]`` pairs (one host sync for a CUDA tensor)."""
    if isinstance(spatial_shapes, torch.Tensor):
        return [[int(h), int(w)] for h, w in spatial_shapes.tolist()]
    return [[int(h), int(w)] for h, w in spatial_shapes]


def ms_deform_attn_ref(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                       sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                       upcast: bool = False) -> torch.Tensor:
    """Multi-scale deformable attention by ``grid_sample`` per level (shapes as in
    :func:`visionattn.ops.ms_deform_attn`).

    Args:
        value: [B, S, heads, Dh], the levels' maps flattened row-major and concatenated (S = sum of H_l * W_l).
        spatial_shapes: [L, 2] (H_l, W_l).
        level_start_index: [L] start of each level in S (unused: the levels are contiguous in order of
            ``spatial_shapes``, as the public op checks; kept for the signature of the original).
        sampling_locations: [B, Q, heads, L, P, 2] normalised (x, y).
        attention_weights: [B, Q, heads, L, P], already normalised over L * P.
        upcast: Compute in float32 (else in the promoted dtype of the inputs) and return value's dtype.

    Returns:
        [B, Q, heads * Dh] in value's dtype.
    """
    del level_start_index
    out_dtype = value.dtype
    dtype = torch.promote_types(torch.promote_types(value.dtype, sampling_locations.dtype), attention_weights.dtype)
    if upcast:
        dtype = torch.promote_types(dtype, torch.float32)
    value, sampling_locations, attention_weights = (t.to(dtype) for t in (value, sampling_locations,
                                                                          attention_weights))
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = level_sizes(spatial_shapes)
    per_level = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1]
    samples = []
    for lvl, (h, w) in enumerate(sizes):
        # [B, H*W, heads, Dh] -> [B*heads, Dh, H, W]
        value_l = per_level[lvl].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, h, w)
        # [B, Q, heads, P, 2] -> [B*heads, Q, P, 2]
        grid_l = grids[:, :, :, lvl].transpose(1, 2).reshape(batch * heads, queries, points, 2)
        samples.append(F.grid_sample(value_l, grid_l, mode='bilinear', padding_mode='zeros', align_corners=False))
    if samples:
        stacked = torch.stack(samples, dim=-2).flatten(-2)  # [B*heads, Dh, Q, L*P]
    else:  # no level (S = 0): nothing to sum, zeros; value's empty map keeps it in the graph
        stacked = value.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, 1, 0).expand(-1, -1, queries, -1)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (stacked * weights).sum(-1).view(batch, heads * head_dim, queries)
    return out.transpose(1, 2).contiguous().to(out_dtype)
