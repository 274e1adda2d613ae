"""The check a backbone runs on its input images, so a wrong input gets a message naming the model and the shape.

Without it a 3-D tensor (one image without its batch axis) or uint8 images fail deep inside (a permute, a
BatchNorm, a conv's dtype check) with a message that names neither (issue 21).
"""
import torch

__all__ = ['check_images']


@torch.jit.ignore
def check_images(x: torch.Tensor, in_chans: int, family: str) -> torch.Tensor:
    """``x`` itself when it is a floating [batch, in_chans, height, width] tensor, else a ValueError naming ``family``.

    Backbones call ``torch.fx.wrap('check_images')`` at their top level: FX then keeps the call as one node and
    TorchScript of the traced graph calls back into Python (``torch.jit.ignore``).
    """
    if x.dim() != 4 or x.shape[1] != in_chans or not x.is_floating_point():
        raise ValueError(f'{family} expects images of shape [batch, {in_chans}, height, width] of a floating-point '
                         f'dtype, got {tuple(x.shape)} of {x.dtype}')
    return x
