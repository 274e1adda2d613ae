"""visionattn's backbone families, one module each; importing them registers their models with timm."""
from . import resnet_attn  # noqa: F401
