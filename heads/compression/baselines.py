"""Baselines for learned image compression: Pillow's codecs (JPEG / WebP / AVIF) and CompressAI's zoo models with
real bitstreams, measured as the task model is (bpp from the code length, PSNR and MS-SSIM on uint8 images)."""
import io
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from visionattn.hub import (
    CheckpointError,
    check_state_dict,
    download_weights,
    load_checkpoint_file,
    sha256_file,
    unwrap_state_dict,
)

from .measures import codec_round_trip, ms_ssim_value, psnr, to_uint8

__all__ = ['pillow_rd_points', 'compressai_zoo_codec', 'learned_rd_points', 'baseline_rd_points']

CLASSICAL_CODECS = ('JPEG', 'WEBP', 'AVIF')  # Pillow's lossy codecs with a 0..100 ``quality``
_CDF_BUFFERS = ('_quantized_cdf', '_offset', '_cdf_length', 'scale_table')
COMPRESSAI_PREFIX = 'compressai:'  # a baseline named 'compressai:<zoo architecture>' is one of CompressAI's models


def _rd_point(quality: int, images: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor],
              num_bytes: Sequence[int]) -> Dict:
    """Mean bpp (bytes of each image's code over its pixels), PSNR and MS-SSIM of one operating point."""
    bpps = [8 * n / (image.shape[-2] * image.shape[-1]) for image, n in zip(images, num_bytes)]
    return {'quality': int(quality), 'bpp': float(np.mean(bpps)),
            'psnr': float(np.mean([psnr(i, d) for i, d in zip(images, decoded)])),
            'ms_ssim': float(np.mean([ms_ssim_value(i, d) for i, d in zip(images, decoded)]))}


def _check_uint8_images(images: Sequence[torch.Tensor], who: str) -> None:
    if not images:
        raise ValueError(f'{who} needs at least one image')
    for image in images:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f'images must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}')


def pillow_rd_points(images: Sequence[torch.Tensor], fmt: str, qualities: Sequence[int]) -> List[Dict]:
    """Mean bpp (encoded file length), PSNR and MS-SSIM of a Pillow codec ('JPEG', 'WEBP', 'AVIF') at each quality.

    AVIF (AV1 intra, through Pillow's libavif) stands in for BPG (HEVC intra), which no package here provides.

    Args:
        images: uint8 (3, H, W) tensors.
        fmt: Pillow format name.
        qualities: Pillow ``quality`` values.
    """
    from PIL import Image, features

    _check_uint8_images(images, 'pillow_rd_points')
    if fmt.upper() == 'AVIF' and not features.check('avif'):
        raise ValueError('this Pillow build has no AVIF support (Pillow >= 11.3 wheels include libavif)')
    points = []
    for quality in qualities:
        decoded, sizes = [], []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buffer, format=fmt, quality=int(quality))
            pixels = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))
            decoded.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1))
            sizes.append(len(buffer.getvalue()))
        points.append(_rd_point(quality, [image.cpu() for image in images], decoded, sizes))
    return points


def compressai_zoo_codec(architecture: str, quality: int, metric: str = 'mse', pretrained: bool = True,
                         file: Optional[Union[str, Path]] = None, url: Optional[str] = None) -> nn.Module:
    """One of CompressAI's zoo models ('bmshj2018-factorized', 'mbt2018-mean', 'cheng2020-anchor', ...) at a quality.

    The released weights are downloaded once into torch hub's cache (or read from ``file``), their sha256 checked
    against the prefix in the file name, and read with ``weights_only=True`` (CompressAI's own zoo loader would
    unpickle them), then loaded strictly: a file of another architecture or quality fails with the key list.

    Args:
        architecture: A name of ``compressai.zoo.image.model_architectures``.
        quality: 1 (lowest rate) to 8 (6 for the cheng2020 models).
        metric: 'mse' or 'ms-ssim': the distortion the released weights were trained for.
        pretrained: Load the released weights; False gives a randomly initialised model of the same layout.
        file: A local checkpoint instead of the download.
        url: Another address of the weights (the default is CompressAI's).
    """
    from compressai.zoo import image as zoo
    from compressai.zoo.pretrained import load_pretrained

    if architecture not in zoo.model_architectures:
        raise ValueError(f'unknown CompressAI architecture {architecture!r}; choose from '
                         f'{sorted(zoo.model_architectures)}')
    if quality not in zoo.cfgs[architecture]:
        raise ValueError(f'{architecture} has qualities {sorted(zoo.cfgs[architecture])}, not {quality}')
    model = zoo.model_architectures[architecture](*zoo.cfgs[architecture][quality])
    if not pretrained:
        return model.eval()
    if file is None:
        url = url or zoo.model_urls.get(architecture, {}).get(metric, {}).get(quality)
        if url is None:
            raise ValueError(f'CompressAI released no {metric} weights for {architecture} quality {quality}')
        file = download_weights(url)
        expected = re.search(r'-([a-f0-9]{6,})\.', Path(file).name)  # torch hub's convention: sha256 prefix
        if expected and not sha256_file(file).startswith(expected.group(1)):
            Path(file).unlink()
            raise CheckpointError(f'checksum mismatch for {url}: the sha256 does not start with {expected.group(1)}')
    state_dict = load_pretrained(unwrap_state_dict(load_checkpoint_file(file)))
    # The entropy models' CDF tables are sized by the trained distributions: every other tensor must match.
    own = model.state_dict()
    shaped = {k: own[k] if k in own and k.endswith(_CDF_BUFFERS) else v for k, v in state_dict.items()}
    check_state_dict(shaped, model, source=f'{file} ({architecture}, quality {quality})')
    model.load_state_dict(state_dict)  # CompressionModel's version resizes the entropy models' CDF buffers
    return model.eval()


@torch.no_grad()
def learned_rd_points(images: Sequence[torch.Tensor], architecture: str, qualities: Sequence[int],
                      metric: str = 'mse', device: Union[str, torch.device] = 'cpu', pretrained: bool = True,
                      files: Optional[Dict[int, Union[str, Path]]] = None) -> List[Dict]:
    """Mean bpp (real bitstreams), PSNR and MS-SSIM of a CompressAI zoo model at each quality.

    Images are padded (edge replication) to a multiple of 64, CompressAI's own evaluation rule, coded with
    :func:`codec_round_trip`, and cropped back; the rate counts the padded code over the original pixels.

    Args:
        images: uint8 (3, H, W) tensors.
        architecture, metric, pretrained: As :func:`compressai_zoo_codec`.
        qualities: Zoo quality indices.
        device: Where to run the codec.
        files: Local checkpoints per quality instead of the downloads.
    """
    _check_uint8_images(images, 'learned_rd_points')
    points = []
    for quality in qualities:
        codec = compressai_zoo_codec(architecture, quality, metric, pretrained,
                                     file=(files or {}).get(quality)).to(device)
        decoded, sizes = [], []
        for image in images:
            height, width = image.shape[-2:]
            x = image[None].to(device).float() / 255.0
            x = F.pad(x, (0, -width % 64, 0, -height % 64), mode='replicate')
            result = codec_round_trip(codec, x, estimate=False)
            decoded.append(to_uint8(result['x_hat'][0, :, :height, :width]).cpu())
            sizes.append(result['num_bytes'][0])
        points.append(_rd_point(quality, [image.cpu() for image in images], decoded, sizes))
    return points


def baseline_rd_points(images: Sequence[torch.Tensor], name: str, qualities: Sequence[int],
                       learned_qualities: Sequence[int] = (1, 2, 3, 4, 5, 6), device='cpu') -> List[Dict]:
    """A baseline's RD points by name: a Pillow codec (:data:`CLASSICAL_CODECS`) at ``qualities``, or
    ``'compressai:<architecture>'`` (e.g. 'compressai:cheng2020-anchor') at ``learned_qualities``."""
    if name.lower().startswith(COMPRESSAI_PREFIX):
        return learned_rd_points(images, name[len(COMPRESSAI_PREFIX):], learned_qualities, device=device)
    if name.upper() not in CLASSICAL_CODECS:
        raise ValueError(f'unknown baseline {name!r}: use one of {CLASSICAL_CODECS} or '
                         f'"{COMPRESSAI_PREFIX}<architecture>"')
    return pillow_rd_points(images, name.upper(), qualities)
