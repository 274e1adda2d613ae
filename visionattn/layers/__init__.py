"""nn.Modules built on visionattn's ops, reusable by any backbone or head."""
from .ela import ELA_VERSIONS, EfficientLocalAttention, ElaVersion

__all__ = ['EfficientLocalAttention', 'ElaVersion', 'ELA_VERSIONS']
