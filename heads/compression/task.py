"""Learned image compression as an mmengine model: collate, preprocessor, the :class:`ImageCompressor` task model
(any CompressAI ``CompressionModel``, S2LIC by default) and the two-optimizer constructor (main + entropy-bottleneck
aux); the compression datasets are registered here.
"""
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import BaseDataPreprocessor, is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
from mmengine.structures import BaseDataElement

from visionattn.engine.base import TaskModel
from visionattn.engine.registry import DATASETS, FUNCTIONS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from .data import CompressionCropDataset, CompressionEvalDataset
from .measures import MSSSIM_MIN_SIDE, codec_round_trip, to_uint8

__all__ = ['compression_collate', 'CompressionDataPreprocessor', 'ImageCompressor',
           'CompressionOptimWrapperConstructor']

DATASETS.register_module(module=CompressionCropDataset)
DATASETS.register_module(module=CompressionEvalDataset)


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
    from .s2lic import build_s2lic
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

    def _forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> Dict:
        return self.codec(inputs)

    def loss(self, inputs: torch.Tensor,
             data_samples: Optional[List[BaseDataElement]] = None) -> Dict[str, torch.Tensor]:
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
