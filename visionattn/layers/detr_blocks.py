"""Generic DETR-family transformer blocks, as detrex builds DETR, Deformable DETR and DINO from them.

detrex (github.com/IDEA-Research/detrex, Apache-2.0): ``detrex/layers/position_embedding.py``
(``PositionEmbeddingSine``, after DETR's, github.com/facebookresearch/detr, Apache-2.0), ``detrex/modeling/neck/
channel_mapper.py`` (``ChannelMapper``), ``detrex/layers/mlp.py`` (``MLP``, ``FFN``) and ``detrex/layers/
attention.py`` (``MultiheadAttention``). Written afresh, keeping detrex's module and parameter names (``convs``,
``extra_convs``, ``layers``, ``attn``) so that official DETR-family checkpoints load by key name. Used by
Focus-DETR (:mod:`visionattn.heads.detection.focus_detr`); multi-scale deformable attention is
:class:`~visionattn.layers.MultiScaleDeformableAttention`.
"""
import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['PositionEmbeddingSine', 'ConvNorm', 'ChannelMapper', 'MLP', 'FFN', 'MultiheadAttention']


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-d sine position embedding of a padding mask: [B, H, W] bool (True = pad) -> [B, 2F, H, W]
    (y features then x features). Normalised: (cumsum + offset) / (valid extent + eps) * scale."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, eps: float = 1e-6, offset: float = -0.5):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize = num_pos_feats, temperature, normalize
        self.scale, self.eps, self.offset = scale, eps, offset

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        if isinstance(mask, torch.Tensor) and (mask.dtype != torch.bool or mask.dim() != 3):
            # ~ of an integer mask is a bitwise not (~1 = -2, ~0 = -1 or 255): the embedding came out silently wrong
            raise TypeError(f'PositionEmbeddingSine takes a bool padding mask [B, H, W] (True = padding), got '
                            f'{mask.dtype} of shape {list(mask.shape)}')
        not_mask = ~mask
        y = not_mask.cumsum(1, dtype=torch.float32)
        x = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / self.num_pos_feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), -1).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), -1).flatten(3)
        return torch.cat((py, px), 3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f'num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}, '
                f'offset={self.offset}')


class ConvNorm(nn.Module):
    """Conv2d (with bias) followed by a norm layer (detrex's ``ConvNormAct`` without activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 num_groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2)
        self.norm = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ChannelMapper(nn.Module):
    """Each backbone level to ``out_channels`` by a 1x1 conv + GN, then ``num_outs - len(in_channels)`` extra
    levels by 3x3/stride-2 conv + GN (the first on the last backbone map, the next on the previous extra level)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_outs: int = 4, kernel_size: int = 1,
                 num_groups: int = 32):
        super().__init__()
        if out_channels % num_groups:
            raise ValueError(f'GroupNorm({num_groups}) needs embed_dims divisible by {num_groups}, got {out_channels}')
        if num_outs < len(in_channels):
            raise ValueError(f'num_outs={num_outs} is fewer than the {len(in_channels)} backbone levels')
        self.convs = nn.ModuleList(ConvNorm(c, out_channels, kernel_size, 1, num_groups) for c in in_channels)
        extra = [ConvNorm(in_channels[-1] if i == 0 else out_channels, out_channels, 3, 2, num_groups)
                 for i in range(num_outs - len(in_channels))]
        self.extra_convs = nn.ModuleList(extra) if extra else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=1)
                nn.init.constant_(m.bias, 0)

    def forward(self, feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(feats) != len(self.convs):
            raise ValueError(f'ChannelMapper expects {len(self.convs)} maps, got {len(feats)}')
        outs = [conv(f) for conv, f in zip(self.convs, feats)]
        for i, conv in enumerate(self.extra_convs or []):
            outs.append(conv(feats[-1] if i == 0 else outs[-1]))
        return outs


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (detrex's ``MLP``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class FFN(nn.Module):
    """Linear -> ReLU -> Dropout -> Linear -> Dropout with the identity added (detrex's 2-fc ``FFN``; the
    ``layers`` Sequential keeps its state-dict names ``layers.0.0`` and ``layers.1``)."""

    def __init__(self, embed_dims: int = 256, feedforward_dims: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_dims), nn.ReLU(inplace=True), nn.Dropout(dropout)),
            nn.Linear(feedforward_dims, embed_dims), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, as ``attn``) with position embeddings added to query and key and
    the identity added to the output (detrex's ``MultiheadAttention``)."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop, batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query: torch.Tensor, pos: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        qk = query if pos is None else query + pos
        out = self.attn(qk, qk, query, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                        need_weights=False)[0]
        return query + self.proj_drop(out)
