"""nn.Modules built on visionattn's ops, reusable by any backbone or head."""
from .bra import BiLevelRoutingAttention
from .deformable_attention import MultiScaleDeformableAttention
from .detr_blocks import FFN, MLP, ChannelMapper, ConvNorm, MultiheadAttention, PositionEmbeddingSine
from .ela import ELA_VERSIONS, EfficientLocalAttention, ElaVersion
from .moba import MoBAAttention, VMoBAAttention
from .neighborhood_attention import NeighborhoodAttention2d
from .norm import LayerNorm
from .partial import (
    EuclideanRelPosSelfAttention2d,
    GaussianChannelAttention,
    PartialChannelAttention,
    PartialConv,
    PartialSelfAttention,
    PartialSpatialAttention,
)
from .ss2d import SS2D, ShiftedWindowAttention

__all__ = [
    'BiLevelRoutingAttention', 'LayerNorm', 'EfficientLocalAttention', 'ElaVersion', 'ELA_VERSIONS',
    'NeighborhoodAttention2d',
    'PartialConv', 'GaussianChannelAttention', 'PartialChannelAttention', 'PartialSpatialAttention',
    'EuclideanRelPosSelfAttention2d', 'PartialSelfAttention', 'MoBAAttention', 'VMoBAAttention',
    'SS2D', 'ShiftedWindowAttention', 'MultiScaleDeformableAttention',
    'PositionEmbeddingSine', 'ConvNorm', 'ChannelMapper', 'MLP', 'FFN', 'MultiheadAttention',
]
