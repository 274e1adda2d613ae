"""Multi-scale deformable attention as an nn.Module (Zhu et al., "Deformable DETR", ICLR 2021, arXiv:2010.04159).

Deformable DETR's ``MSDeformAttn`` (github.com/fundamentalvision/Deformable-DETR, Apache-2.0), as DINO, Focus-DETR
and detrex's ``MultiScaleDeformableAttention`` (github.com/IDEA-Research/detrex, Apache-2.0) use it, written afresh
on :func:`visionattn.ops.ms_deform_attn`. The parameters carry the original names and shapes (``sampling_offsets``,
``attention_weights``, ``value_proj``, ``output_proj``) and the original initialisation, so official checkpoints load
without renaming.

Unlike detrex's module this one adds no residual (``identity``), no dropout and no ``query_pos``: it returns
``output_proj(attention)`` only, as Deformable DETR's ``MSDeformAttn`` does; the caller adds position embeddings,
dropout and the residual.
"""
import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.deformable import ms_deform_attn

__all__ = ['MultiScaleDeformableAttention']


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention: each query samples ``num_points`` locations per head on each of
    ``num_levels`` feature maps around its reference point and sums them with learned weights. Returns
    ``output_proj`` of the result only: no residual and no dropout (detrex's module adds ``identity`` inside).

    Args:
        embed_dims: Channels C of the query and of the value input.
        num_heads: Attention heads; ``value_proj``'s width must divide by it.
        num_levels: Feature levels L.
        num_points: Sampling points P per head and level.
        value_proj_ratio: Width of ``value_proj``'s output as a fraction of C (mmcv/detrex; 1.0 in Deformable DETR).
        batch_first: Query/value/output are [B, N, C] (else [N, B, C], as mmcv's default; reference points and the
            padding mask stay batch-first in both cases).
        backend: The op's backend: None (auto), 'reference' or 'triton'.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 value_proj_ratio: float = 1.0, batch_first: bool = True, backend: Optional[str] = None,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        for name, count in (('num_heads', num_heads), ('num_levels', num_levels), ('num_points', num_points)):
            if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 1:
                raise ValueError(f'{name} must be a positive int, got {count!r}')
        value_dims = int(embed_dims * value_proj_ratio)
        if value_dims % num_heads:
            raise ValueError(f'the value width {value_dims} (embed_dims={embed_dims} x value_proj_ratio='
                             f'{value_proj_ratio}) must be divisible by num_heads={num_heads}')
        self.embed_dims, self.num_heads = embed_dims, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.head_dim = value_dims // num_heads
        self.batch_first, self.backend = batch_first, backend
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2, **dd)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points, **dd)
        self.value_proj = nn.Linear(embed_dims, value_dims, **dd)
        self.output_proj = nn.Linear(value_dims, embed_dims, **dd)
        self.reset_parameters()

    def initial_offsets(self) -> torch.Tensor:
        """The offsets' initial bias as [heads, levels, points, 2] (x, y): head h points in direction
        2*pi*h/heads, scaled so that the larger component is 1, times the point index 1..P (Deformable DETR)."""
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        return grid[:, None, None, :] * scale[None, None, :, None].expand(1, self.num_levels, -1, 1)

    def reset_parameters(self) -> None:
        """Deformable DETR's ``MSDeformAttn._reset_parameters``."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(self.initial_offsets().flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: Optional[torch.Tensor],
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deformable attention of the queries to the flattened multi-scale value maps.

        Args:
            query: [B, Q, C] (or [Q, B, C] when not batch_first), position embedding already added.
            reference_points: [B, Q, L, 2] normalised (x, y), offsets being divided by each level's (W, H); or
                [B, Q, L, 4] boxes (cx, cy, w, h), offsets scaled by (w, h) / P * 0.5.
            value: [B, S, C] (or [S, B, C]) flattened levels, S = sum H*W; None means the query (encoder).
            spatial_shapes: [L, 2] integer (H, W).
            level_start_index: [L] integer start of each level in S.
            key_padding_mask: [B, S] bool, True at padding (those values are zeroed), or None.

        Returns:
            ``output_proj`` of the attention, shaped as query; no residual and no dropout are added.
        """
        if value is None:
            value = query
        if not self.batch_first:
            query, value = query.transpose(0, 1), value.transpose(0, 1)
        batch, queries, _ = query.shape
        total = value.shape[1]
        if reference_points.dim() != 4 or reference_points.shape[:3] != (batch, queries, self.num_levels):
            raise ValueError(f'reference_points must be [batch={batch}, queries={queries}, levels={self.num_levels}, '
                             f'2 or 4], got shape {list(reference_points.shape)}')
        value = self.value_proj(value)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch, total):
                raise ValueError(f'key_padding_mask must be [batch={batch}, S={total}], got shape '
                                 f'{list(key_padding_mask.shape)}')
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, total, self.num_heads, self.head_dim)
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(batch, queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, queries, heads, levels * points)
        weights = F.softmax(weights, -1).view(batch, queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            if not isinstance(spatial_shapes, torch.Tensor):
                spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=query.device)
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            normalizer = normalizer.to(torch.promote_types(offsets.dtype, reference_points.dtype))
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f'reference_points must end in 2 (x, y) or 4 (cx, cy, w, h), got shape '
                             f'{list(reference_points.shape)}')
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, backend=self.backend)
        out = self.output_proj(out)
        return out if self.batch_first else out.transpose(0, 1)

    def extra_repr(self) -> str:
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, num_levels={self.num_levels}, '
                f'num_points={self.num_points}, head_dim={self.head_dim}')
