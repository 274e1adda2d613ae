"""visionattn's backbone families, one module each; importing them registers their models with timm."""
from . import biformer, nat, patnet, resnet_attn  # noqa: F401
