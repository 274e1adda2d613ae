"""How learned image compression is measured: the codec round trip through real bitstreams and the quality measures
of its output.

Rates are always measured from real bitstreams (``compress`` output length, no container header), distortion on the
uint8 images: PSNR with peak 255 (at most 100 dB), MS-SSIM with pytorch-msssim (data range 1, five scales).
"""
import contextlib
import math
import time
from typing import Dict

import torch
import torch.nn as nn

__all__ = ['codec_round_trip', 'check_unit_images', 'psnr', 'ms_ssim_value', 'to_uint8', 'PSNR_MAX_DB']

MSSSIM_MIN_SIDE = 161  # pytorch-msssim's 5 scales with an 11-tap window need sides > (11 - 1) * 2**4
# PSNR is capped here (as x264 caps it; the evaluation's ms_ssim_db is capped at 100 dB too): a lossless image had an
# infinite PSNR, which made the mean PSNR of the test set, the gain over JPEG and the RD point inf. Below the cap the
# value is exact; above it lie only images within 6.5e-6 levels^2 of MSE, e.g. one value one level off in >153,787.
PSNR_MAX_DB = 100.0


# -- quality measures ---------------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 (clamped, rounded): what a decoder would write to a file. uint8 images come
    back unchanged (clamping them to [0, 1] first turned every value from 1 up into 255); other integer images are
    refused (their range is unknown)."""
    if images.dtype == torch.uint8:
        return images.detach().clone()
    if not images.is_floating_point():
        raise ValueError(f'to_uint8 takes float images in [0, 1] (or uint8 ones), got {images.dtype}')
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def psnr(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR in dB (peak 255) between two uint8 images of one shape, capped at :data:`PSNR_MAX_DB` (which identical
    images score)."""
    if reference.shape != decoded.shape:
        raise ValueError(f'PSNR of images of different shapes {tuple(reference.shape)} and {tuple(decoded.shape)}')
    if reference.dtype != torch.uint8 or decoded.dtype != torch.uint8:  # the peak is 255: [0, 1] floats score ~0 dB
        raise ValueError(f'PSNR takes uint8 images (peak 255), got {reference.dtype} and {decoded.dtype}; convert '
                         f'[0, 1] floats with to_uint8')
    if reference.numel() == 0:  # the mean of no pixels is NaN
        raise ValueError(f'PSNR of empty images {tuple(reference.shape)}')
    mse = (reference.double() - decoded.double()).pow(2).mean().item()
    return PSNR_MAX_DB if mse == 0 else min(10 * math.log10(255 ** 2 / mse), PSNR_MAX_DB)


def ms_ssim_value(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """MS-SSIM (pytorch-msssim, data range 1) of two uint8 (C, H, W) images; sides must be at least 161 pixels."""
    from pytorch_msssim import ms_ssim

    if reference.dtype != torch.uint8 or decoded.dtype != torch.uint8:
        raise ValueError(f'MS-SSIM takes uint8 images, got {reference.dtype} and {decoded.dtype}; convert [0, 1] '
                         f'floats with to_uint8')
    if reference.shape != decoded.shape:
        raise ValueError(f'MS-SSIM of images of different shapes {tuple(reference.shape)} and {tuple(decoded.shape)}')
    if reference.ndim != 3:  # a batch would become 5-D here, which pytorch-msssim reads as a volume
        raise ValueError(f'MS-SSIM takes one image (C, H, W), got {tuple(reference.shape)}')
    if min(reference.shape[-2:]) < MSSSIM_MIN_SIDE:
        raise ValueError(f'MS-SSIM needs both sides >= {MSSSIM_MIN_SIDE} pixels (5 scales), got '
                         f'{tuple(reference.shape[-2:])}')
    return ms_ssim(reference[None].double() / 255, decoded[None].double() / 255, data_range=1.0).item()


# -- the codec round trip -----------------------------------------------------------------------------------------
def check_unit_images(images: torch.Tensor, who: str) -> None:
    """Refuse what a codec must not be given: integer images, and values that are not finite or outside [0, 1].
    NaN or inf latents make CompressAI's rANS coder loop forever; 0..255 or [-1, 1] floats code without an error,
    and the clamped originals then make the metrics wrong."""
    if not images.is_floating_point():
        raise ValueError(f'{who} takes float images in [0, 1], got {images.dtype} (divide uint8 images by 255)')
    if images.numel():
        low, high = images.min().item(), images.max().item()
        if not (math.isfinite(low) and math.isfinite(high)):  # NaN propagates into min/max
            raise ValueError(f'{who}: the images hold NaN or infinite values')
        if low < 0 or high > 1:
            raise ValueError(f'{who} takes images in [0, 1], got values in [{low:.4g}, {high:.4g}] (0..255 or '
                             f'[-1, 1] data?)')


@contextlib.contextmanager
def _bit_exact_kernels():
    """Encoder and decoder must compute bit-identical entropy parameters: no TF32, no autotuned convolutions.
    The previous settings come back afterwards, so training keeps its fast kernels."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


@torch.no_grad()
def codec_round_trip(codec: nn.Module, images: torch.Tensor, estimate: bool = True) -> Dict:
    """Compress and decompress a batch with real bitstreams.

    The entropy models' CDF tables are rebuilt first (``update(force=True)``), so weights changed since the last
    update are coded correctly.

    Args:
        codec: A CompressAI ``CompressionModel`` (``compress`` returns ``{'strings': [per-image lists], 'shape'}``).
        images: (B, 3, H, W) floats in [0, 1].
        estimate: Also run the forward pass and return the likelihood-estimated bits per image.

    Returns:
        ``x_hat`` (B, 3, H, W) clamped to [0, 1], the input's size: a codec that decodes its padded grid (CompressAI's
        zoo models on sizes not a multiple of their stride) is cropped back to the top-left H x W; ``num_bytes``
        (per image, all strings); ``encode_s`` and ``decode_s`` (the batch's wall-clock divided by B);
        ``estimated_bits`` (per image, or None).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'codec_round_trip expects (B, 3, H, W) images, got shape {tuple(images.shape)}')
    if images.shape[0] == 0:  # the per-image times divided by zero
        raise ValueError('codec_round_trip got an empty batch (B = 0)')
    check_unit_images(images, 'codec_round_trip')
    was_training = codec.training
    codec.eval()
    try:
        with _bit_exact_kernels():
            codec.update(force=True)
            batch = images.shape[0]
            _sync(images.device)
            start = time.perf_counter()
            encoded = codec.compress(images)
            _sync(images.device)
            encode_s = (time.perf_counter() - start) / batch
            start = time.perf_counter()
            x_hat = codec.decompress(encoded['strings'], encoded['shape'])['x_hat'].clamp(0, 1)
            _sync(images.device)
            decode_s = (time.perf_counter() - start) / batch
            height, width = images.shape[-2:]
            if x_hat.shape[0] != batch or x_hat.shape[-2] < height or x_hat.shape[-1] < width:
                raise ValueError(f'{type(codec).__name__} decoded {tuple(x_hat.shape)} from images '
                                 f'{tuple(images.shape)}')
            x_hat = x_hat[..., :height, :width]  # a 50x60 image came back 64x64 from a stride-16 zoo codec
            num_bytes = [sum(len(strings[b]) for strings in encoded['strings']) for b in range(batch)]
            estimated = None
            if estimate:
                likelihoods = codec(images)['likelihoods'].values()
                estimated = [sum(float(-torch.log2(v[b]).sum()) for v in likelihoods) for b in range(batch)]
    finally:
        codec.train(was_training)
    return {'x_hat': x_hat, 'num_bytes': num_bytes, 'encode_s': encode_s, 'decode_s': decode_s,
            'estimated_bits': estimated}
