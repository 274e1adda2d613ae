"""Learned image compression as an mmengine model: collate, preprocessor, the :class:`ImageCompressor` task model
(any CompressAI ``CompressionModel``, S2LIC by default), the two-optimizer constructor (main + entropy-bottleneck
aux), the rate-distortion metric, baselines (JPEG / WebP / AVIF via Pillow; CompressAI's zoo models with real
bitstreams), Bjontegaard deltas and the RD plot.

Rates are always measured from real bitstreams (``compress`` output length, no container header), distortion on the
uint8 images: PSNR with peak 255, MS-SSIM with pytorch-msssim (data range 1, five scales).
"""
import contextlib
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseDataPreprocessor, is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from mmengine.structures import BaseDataElement

from visionattn.data.compression import CompressionCropDataset, CompressionEvalDataset
from visionattn.hub import (
    CheckpointError,
    check_state_dict,
    download_weights,
    load_checkpoint_file,
    sha256_file,
    unwrap_state_dict,
)

from .base import TaskModel
from .registry import DATASETS, FUNCTIONS, METRICS, MODELS

__all__ = ['compression_collate', 'CompressionDataPreprocessor', 'ImageCompressor',
           'CompressionOptimWrapperConstructor', 'RateDistortionMetric', 'codec_round_trip', 'psnr', 'ms_ssim_value',
           'to_uint8', 'pillow_rd_points', 'compressai_zoo_codec', 'learned_rd_points', 'baseline_rd_points',
           'bd_rate', 'bd_psnr', 'psnr_at_rate', 'plot_rd_curves']

DATASETS.register_module(module=CompressionCropDataset)
DATASETS.register_module(module=CompressionEvalDataset)
MSSSIM_MIN_SIDE = 161  # pytorch-msssim's 5 scales with an 11-tap window need sides > (11 - 1) * 2**4


# -- quality measures ---------------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 (clamped, rounded): what a decoder would write to a file."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def psnr(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """PSNR in dB (peak 255) between two uint8 images of one shape; identical images give ``inf``."""
    if reference.shape != decoded.shape:
        raise ValueError(f'PSNR of images of different shapes {tuple(reference.shape)} and {tuple(decoded.shape)}')
    mse = (reference.double() - decoded.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def ms_ssim_value(reference: torch.Tensor, decoded: torch.Tensor) -> float:
    """MS-SSIM (pytorch-msssim, data range 1) of two uint8 (3, H, W) images; sides must exceed 160 pixels."""
    from pytorch_msssim import ms_ssim

    if reference.shape != decoded.shape:
        raise ValueError(f'MS-SSIM of images of different shapes {tuple(reference.shape)} and {tuple(decoded.shape)}')
    if min(reference.shape[-2:]) < MSSSIM_MIN_SIDE:
        raise ValueError(f'MS-SSIM needs both sides >= {MSSSIM_MIN_SIDE} pixels (5 scales), got '
                         f'{tuple(reference.shape[-2:])}')
    return ms_ssim(reference[None].double() / 255, decoded[None].double() / 255, data_range=1.0).item()


# -- the codec round trip -----------------------------------------------------------------------------------------
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
        ``x_hat`` (B, 3, H, W) clamped to [0, 1]; ``num_bytes`` (per image, all strings); ``encode_s`` and
        ``decode_s`` (the batch's wall-clock divided by B); ``estimated_bits`` (per image, or None).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'codec_round_trip expects (B, 3, H, W) images, got shape {tuple(images.shape)}')
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
            num_bytes = [sum(len(strings[b]) for strings in encoded['strings']) for b in range(batch)]
            estimated = None
            if estimate:
                likelihoods = codec(images)['likelihoods'].values()
                estimated = [sum(float(-torch.log2(v[b]).sum()) for v in likelihoods) for b in range(batch)]
    finally:
        codec.train(was_training)
    return {'x_hat': x_hat, 'num_bytes': num_bytes, 'encode_s': encode_s, 'decode_s': decode_s,
            'estimated_bits': estimated}


# -- mmengine glue ------------------------------------------------------------------------------------------------
@FUNCTIONS.register_module()
def compression_collate(batch: Sequence[Dict]) -> Dict:
    """Stack uint8 (3, H, W) images of one size; each item's meta becomes a data sample's metainfo."""
    if not batch:
        raise ValueError('compression_collate got an empty batch')
    shapes = {tuple(item['img'].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f'compression batches need images of one size (evaluate with batch_size=1), got '
                         f'{sorted(shapes)}')
    samples = [BaseDataElement(metainfo=dict(item.get('meta', {}))) for item in batch]
    return {'inputs': torch.stack([torch.as_tensor(item['img']) for item in batch]), 'data_samples': samples}


@MODELS.register_module()
class CompressionDataPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the device and scales uint8 images to [0, 1] (float inputs pass unchanged)."""

    def forward(self, data: Dict, training: bool = False) -> Dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if inputs.dtype == torch.uint8:
            inputs = inputs.float() / 255.0
        return {'inputs': inputs, 'data_samples': data.get('data_samples')}


def _build_codec(cfg) -> nn.Module:
    if isinstance(cfg, nn.Module):
        return cfg
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        factory = cfg.pop('type')
        return MODELS.build(dict(type=factory, **cfg)) if isinstance(factory, str) else factory(**cfg)
    raise TypeError(f'codec must be a config dict or an nn.Module, got {type(cfg).__name__}')


def _default_codec() -> Dict:
    from visionattn.heads.compression.s2lic import build_s2lic
    return dict(type=build_s2lic, size='paper')


@MODELS.register_module()
class ImageCompressor(TaskModel):
    """A learned image codec behind mmengine's ``forward(inputs, data_samples, mode)``.

    Training minimises CompressAI's ``RateDistortionLoss``: ``lmbda * 255^2 * MSE + bpp`` (``metric='mse'``) or
    ``lmbda * (1 - MS-SSIM) + bpp`` (``metric='ms-ssim'``), bpp from the likelihoods. The entropy bottleneck's
    auxiliary loss (fitting its quantiles) is stepped by its own optimizer, as CompressAI's examples do: give an
    ``optim_wrapper`` built by :class:`CompressionOptimWrapperConstructor` (keys 'main' and 'aux'; the main one
    excludes the quantiles). With a single optimizer wrapper the aux loss is added to the loss instead; the
    quantiles then also receive the rate-distortion gradient.

    ``predict`` really encodes: each data sample gets ``pred_img`` / ``gt_img`` (uint8, on the original pixels
    when ``meta['ori_size']`` says the input was padded), ``num_bytes``, ``bpp`` (bitstream bytes x 8 / original
    pixels), ``bpp_estimated`` (likelihoods) and ``encode_ms`` / ``decode_ms``.

    Args:
        codec: Config dict (``type=`` a factory or class) or module of a CompressAI ``CompressionModel``;
            default S2LIC at the paper size.
        lmbda: Rate-distortion trade-off (CompressAI's MSE ladder 0.0018 ... 0.0483 for qualities 1 ... 6).
        metric: 'mse' or 'ms-ssim'.
        data_preprocessor: Config; default :class:`CompressionDataPreprocessor`.
        init_cfg: mmengine initialisation config (none: the codec keeps its own initialisation).
    """

    def __init__(self, codec: Union[None, Dict, nn.Module] = None, lmbda: float = 0.013, metric: str = 'mse',
                 data_preprocessor: Optional[Dict] = None, init_cfg: Optional[Dict] = None):
        if metric not in ('mse', 'ms-ssim'):
            raise ValueError(f"metric must be 'mse' or 'ms-ssim', got {metric!r}")
        if not lmbda > 0:
            raise ValueError(f'lmbda must be positive, got {lmbda}')
        super().__init__(data_preprocessor=data_preprocessor or dict(type=CompressionDataPreprocessor),
                         init_cfg=init_cfg)
        from compressai.losses import RateDistortionLoss
        from compressai.models.base import CompressionModel

        self.codec = _build_codec(codec if codec is not None else _default_codec())
        if not isinstance(self.codec, CompressionModel):
            raise TypeError(f'codec must be a compressai CompressionModel, got {type(self.codec).__name__}')
        self.lmbda, self.metric = lmbda, metric
        self.criterion = RateDistortionLoss(lmbda=lmbda, metric=metric)

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        if mode == 'tensor':
            return self.codec(inputs)
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The rate-distortion loss; 'bpp' and the distortion are logged under names without 'loss' so mmengine's
        ``parse_losses`` (which sums every key containing 'loss') adds only the total."""
        if self.metric == 'ms-ssim' and min(inputs.shape[-2:]) < MSSSIM_MIN_SIDE:
            raise ValueError(f'the MS-SSIM loss needs crops of at least {MSSSIM_MIN_SIDE} pixels, got '
                             f'{tuple(inputs.shape[-2:])}')
        terms = self.criterion(self.codec(inputs), inputs)
        losses = {'loss': terms['loss'], 'bpp': terms['bpp_loss'].detach()}
        if self.metric == 'mse':
            losses['mse'] = terms['mse_loss'].detach()
        else:
            losses['ms_ssim'] = terms['ms_ssim_loss'].detach()
        return losses

    def train_step(self, data, optim_wrapper) -> Dict[str, torch.Tensor]:
        """One step of the main optimizer on the RD loss, then one of the aux optimizer on the aux loss."""
        if isinstance(optim_wrapper, OptimWrapperDict):
            missing = {'main', 'aux'} - set(optim_wrapper.keys())
            if missing:
                raise KeyError(f'ImageCompressor needs optimizer wrappers "main" and "aux", missing {sorted(missing)}')
            main, aux = optim_wrapper['main'], optim_wrapper['aux']
        else:
            main, aux = optim_wrapper, None
        with main.optim_context(self):
            data = self.data_preprocessor(data, True)
            losses = self._run_forward(data, mode='loss')
            if aux is None:
                losses['aux_loss'] = self.codec.aux_loss()
        total, log_vars = self.parse_losses(losses)
        main.update_params(total)
        if aux is not None:
            with aux.optim_context(self):
                aux_loss = self.codec.aux_loss()
            aux.update_params(aux_loss)
            log_vars['aux_loss'] = aux_loss.detach()
        return log_vars

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> List:
        batch = inputs.shape[0]
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(batch)]
        if len(data_samples) != batch:
            raise ValueError(f'{len(data_samples)} data samples for {batch} images')
        result = codec_round_trip(self.codec, inputs)
        decoded, originals = to_uint8(result['x_hat']).cpu(), to_uint8(inputs).cpu()
        for b, sample in enumerate(data_samples):
            height, width = sample.metainfo.get('ori_size', inputs.shape[-2:])
            if height > inputs.shape[-2] or width > inputs.shape[-1]:
                raise ValueError(f'meta ori_size {(height, width)} exceeds the input {tuple(inputs.shape[-2:])}')
            pixels = height * width
            sample.set_field(decoded[b, :, :height, :width], 'pred_img')
            sample.set_field(originals[b, :, :height, :width], 'gt_img')
            sample.set_field(result['num_bytes'][b], 'num_bytes')
            sample.set_field(8.0 * result['num_bytes'][b] / pixels, 'bpp')
            sample.set_field(result['estimated_bits'][b] / pixels, 'bpp_estimated')
            sample.set_field(1000 * result['encode_s'], 'encode_ms')
            sample.set_field(1000 * result['decode_s'], 'decode_ms')
        return data_samples


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class CompressionOptimWrapperConstructor:
    """Builds ``OptimWrapperDict(main=..., aux=...)``: 'main' over every parameter except the entropy bottlenecks'
    ``quantiles``, 'aux' over those (CompressAI's ``configure_optimizers`` split).

    Config: ``optim_wrapper=dict(constructor=CompressionOptimWrapperConstructor, main=dict(type=OptimWrapper,
    optimizer=dict(type=Adam, lr=1e-4)), aux=dict(type=OptimWrapper, optimizer=dict(type=Adam, lr=1e-3)))``.
    """

    def __init__(self, optim_wrapper_cfg: Dict, paramwise_cfg: Optional[Dict] = None):
        cfg = dict(optim_wrapper_cfg)
        if 'type' in cfg:
            raise ValueError(f'compression optim_wrapper takes "main" and "aux" wrappers, not a top-level type '
                             f'({cfg["type"]!r}); --amp is not supported: bf16/fp16 likelihoods distort the rate')
        if set(cfg) != {'main', 'aux'}:
            raise ValueError(f'compression optim_wrapper needs exactly the keys "main" and "aux", got {sorted(cfg)}')
        if paramwise_cfg:
            raise ValueError('paramwise_cfg is not supported by CompressionOptimWrapperConstructor')
        self.cfg = cfg

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if is_model_wrapper(model):
            model = model.module
        groups = {'main': [], 'aux': []}
        for name, param in model.named_parameters():
            if param.requires_grad:
                groups['aux' if name.endswith('quantiles') else 'main'].append(param)
        if not groups['aux']:
            raise ValueError('the model has no entropy-bottleneck "quantiles" parameters for the aux optimizer')
        wrappers = {}
        for key, params in groups.items():
            wrapper_cfg = dict(self.cfg[key])
            optimizer = OPTIMIZERS.build(dict(wrapper_cfg.pop('optimizer'), params=params))
            wrapper_cfg.setdefault('type', 'OptimWrapper')
            wrappers[key] = OPTIM_WRAPPERS.build(dict(wrapper_cfg, optimizer=optimizer))
        return OptimWrapperDict(**wrappers)


# -- classical baselines and RD comparison -------------------------------------------------------------------------
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


def _curve(rates: Sequence[float], qualities: Sequence[float], name: str):
    rates, qualities = np.asarray(rates, dtype=np.float64), np.asarray(qualities, dtype=np.float64)
    if rates.shape != qualities.shape or rates.ndim != 1:
        raise ValueError(f'{name}: rates and qualities must be 1-D of one length, got {rates.shape}, '
                         f'{qualities.shape}')
    if len(rates) < 4:
        raise ValueError(f'{name}: Bjontegaard deltas fit a cubic and need >= 4 points, got {len(rates)}')
    if (rates <= 0).any() or not np.isfinite(qualities).all():
        raise ValueError(f'{name}: rates must be positive and qualities finite')
    return np.log(rates), qualities


def _mean_gap(x_anchor, y_anchor, x_test, y_test) -> float:
    """Mean of (cubic fit of y_test on x) - (cubic fit of y_anchor on x) over the overlap of the x ranges."""
    low, high = max(x_anchor.min(), x_test.min()), min(x_anchor.max(), x_test.max())
    if high <= low:
        raise ValueError('the two rate-distortion curves do not overlap')
    integrals = []
    for xs, ys in ((x_anchor, y_anchor), (x_test, y_test)):
        antiderivative = np.polyint(np.polyfit(xs, ys, 3))
        integrals.append(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))
    return float((integrals[1] - integrals[0]) / (high - low))


def bd_rate(anchor_rates, anchor_psnrs, test_rates, test_psnrs) -> float:
    """Bjontegaard delta rate (%) of the test curve against the anchor (VCEG-M33): cubic fits of ln(rate) as a
    function of PSNR, averaged over the common PSNR range; negative means the test codec needs fewer bits."""
    log_a, q_a = _curve(anchor_rates, anchor_psnrs, 'anchor')
    log_t, q_t = _curve(test_rates, test_psnrs, 'test')
    return 100.0 * (math.exp(_mean_gap(q_a, log_a, q_t, log_t)) - 1.0)


def bd_psnr(anchor_rates, anchor_psnrs, test_rates, test_psnrs) -> float:
    """Bjontegaard delta PSNR (dB): cubic fits of PSNR as a function of ln(rate), averaged over the common range."""
    log_a, q_a = _curve(anchor_rates, anchor_psnrs, 'anchor')
    log_t, q_t = _curve(test_rates, test_psnrs, 'test')
    return _mean_gap(log_a, q_a, log_t, q_t)


def psnr_at_rate(points: Sequence[Dict], bpp: float) -> float:
    """PSNR of an RD curve (dicts with 'bpp', 'psnr') linearly interpolated at ``bpp``; NaN outside its range."""
    points = sorted(points, key=lambda p: p['bpp'])
    rates = [p['bpp'] for p in points]
    if not points or not rates[0] <= bpp <= rates[-1]:
        return float('nan')
    return float(np.interp(bpp, rates, [p['psnr'] for p in points]))


def plot_rd_curves(curves: Dict[str, Sequence[Dict]], path, title: str = '', quality: str = 'psnr') -> None:
    """Write a PNG of rate-distortion curves: ``curves`` maps a label to points with 'bpp' and ``quality``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4.5))
    for label, points in curves.items():
        points = sorted(points, key=lambda p: p['bpp'])
        classical = label.upper() in CLASSICAL_CODECS
        style = 'o-' if classical else ('*-' if len(points) > 1 else '*')
        axis.plot([p['bpp'] for p in points], [p[quality] for p in points], style, label=label,
                  markersize=6 if classical else 14)
    axis.set_xlabel('bpp (measured bitstream)')
    axis.set_ylabel({'psnr': 'PSNR (dB)', 'ms_ssim': 'MS-SSIM'}.get(quality, quality))
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@METRICS.register_module()
class RateDistortionMetric(BaseMetric):
    """Mean bpp (real bitstreams), PSNR, MS-SSIM, estimated bpp and encode/decode ms of :class:`ImageCompressor`
    predictions; optionally the classical codecs on the same images and the PSNR of JPEG at the model's bpp.

    Args:
        baselines: Codecs to run on the evaluated images: Pillow's ('JPEG', 'WEBP', 'AVIF') and CompressAI's zoo
            models as 'compressai:<architecture>' (e.g. 'compressai:cheng2020-anchor', released weights downloaded
            once); empty: none.
        qualities: The Pillow codecs' quality settings.
        learned_qualities: The CompressAI models' quality indices.
        plot_path: Write the RD plot (model point and baselines) here when set.
        results_path: Write the metrics and the baseline curves as JSON here when set (tools/rd_compare.py reads
            one such file per quality level and computes BD-rates).
    """
    default_prefix = 'rd'

    def __init__(self, baselines: Sequence[str] = (), qualities: Sequence[int] = (5, 10, 20, 30, 50, 75, 90),
                 learned_qualities: Sequence[int] = (1, 2, 3, 4, 5, 6), plot_path: Optional[str] = None,
                 results_path: Optional[str] = None, collect_device: str = 'cpu',
                 prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.baselines, self.qualities, self.plot_path = tuple(baselines), tuple(qualities), plot_path
        self.results_path, self.learned_qualities = results_path, tuple(learned_qualities)
        self.baseline_points: Dict[str, List[Dict]] = {}

    def process(self, data_batch, data_samples: Sequence[Dict]) -> None:
        for sample in data_samples:
            missing = [k for k in ('pred_img', 'gt_img', 'bpp') if k not in sample]
            if missing:
                raise KeyError(f'RateDistortionMetric needs ImageCompressor predictions; missing {missing}')
            reference, decoded = sample['gt_img'].cpu(), sample['pred_img'].cpu()
            self.results.append({
                'bpp': float(sample['bpp']), 'bpp_estimated': float(sample.get('bpp_estimated', float('nan'))),
                'psnr': psnr(reference, decoded), 'ms_ssim': ms_ssim_value(reference, decoded),
                'encode_ms': float(sample.get('encode_ms', float('nan'))),
                'decode_ms': float(sample.get('decode_ms', float('nan'))),
                'gt_img': reference if self.baselines else None})

    def compute_metrics(self, results: List[Dict]) -> Dict[str, float]:
        keys = ('bpp', 'bpp_estimated', 'psnr', 'ms_ssim', 'encode_ms', 'decode_ms')
        metrics = {k: float(np.mean([r[k] for r in results])) for k in keys}
        metrics['ms_ssim_db'] = -10 * math.log10(max(1 - metrics['ms_ssim'], 1e-10))
        images = [r['gt_img'] for r in results if r['gt_img'] is not None]
        self.baseline_points = {name.lower(): baseline_rd_points(images, name, self.qualities, self.learned_qualities)
                                for name in self.baselines}
        for fmt, points in self.baseline_points.items():
            metrics[f'{fmt}_psnr_at_bpp'] = psnr_at_rate(points, metrics['bpp'])
            metrics[f'psnr_gain_vs_{fmt}'] = metrics['psnr'] - metrics[f'{fmt}_psnr_at_bpp']
        if self.plot_path:
            curves = {'model': [{'bpp': metrics['bpp'], 'psnr': metrics['psnr']}], **self.baseline_points}
            plot_rd_curves(curves, self.plot_path)
        if self.results_path:
            path = Path(self.results_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({'model': metrics, **self.baseline_points}, indent=2))
        return metrics
