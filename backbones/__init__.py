"""visionattn's backbone families, one module each; importing them registers their models with timm."""
from . import biformer, lamamba, nat, patnet, resnet_attn  # noqa: F401
