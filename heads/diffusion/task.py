"""Diffusion as an mmengine model: collate, data preprocessor, the :class:`DiffusionModel` task model
(epsilon-, v- or x0-prediction training with diffusers' DDPMScheduler, sampling with DPM-Solver++ / DDIM / DDPM
and classifier-free guidance), the :class:`ControlledDiffusionModel` for control nets such as RelaCtrl, the
``tools/test.py --show-dir`` drawing (:class:`DiffusionSamplesHook`); the diffusion datasets are registered here.

The denoiser is any module of the interface in heads/diffusion/dit.py: attributes in_channels, out_channels,
input_size, num_classes; ``forward(x, t, y=None, **cond)``. Diffusion runs in pixel space (images scaled to [-1, 1])
unless a VAE is given (diffusers' AutoencoderKL: latents = scaling_factor x the posterior sample). The metrics are in
:mod:`visionattn.heads.diffusion.evaluation`.
"""
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseDataPreprocessor
from mmengine.structures import BaseDataElement

from visionattn.engine.base import TaskModel
from visionattn.engine.hooks import ShowDirHook
from visionattn.engine.registry import DATASETS, FUNCTIONS, HOOKS, MODELS

from .data import ImageFolderCannyDataset, SyntheticDiffusionPairs
from .evaluation import as_numpy

__all__ = ['diffusion_collate', 'DiffusionDataPreprocessor', 'DiffusionModel', 'ControlledDiffusionModel',
           'DiffusionSamplesHook']

SAMPLERS = ('dpm_solver', 'ddim', 'ddpm')
PREDICTION_TYPES = ('epsilon', 'v_prediction', 'sample')
DATASETS.register_module(module=SyntheticDiffusionPairs)
DATASETS.register_module(module=ImageFolderCannyDataset)


@FUNCTIONS.register_module()
def diffusion_collate(batch: Sequence[Dict]) -> Dict:
    """Stack images (uint8 [C, H, W] or [C, T, H, W]); labels, controls and meta go to one data sample per item."""
    if not batch:
        raise ValueError('diffusion_collate got an empty batch')
    shapes = {tuple(item['img'].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f'diffusion batches need images of one size, got {sorted(shapes)}')
    # Labels and controls are stacked first and each data sample holds a view: a loader worker then sends one
    # shared-memory block per field instead of one per item (128 items of small tensors cost the main process
    # about 100 ms a batch to receive, more than the training step of the smoke configs).
    labels = controls = None
    if all('gt_label' in item for item in batch):
        labels = torch.as_tensor([item['gt_label'] for item in batch], dtype=torch.long)
    if all('control' in item for item in batch) and len({tuple(item['control'].shape) for item in batch}) == 1:
        controls = torch.stack([torch.as_tensor(item['control']) for item in batch])
    samples = []
    for i, item in enumerate(batch):
        fields = {}
        if 'gt_label' in item:
            label = labels[i] if labels is not None else torch.as_tensor(item['gt_label'], dtype=torch.long)
            fields['gt_label'] = label
        if 'control' in item:
            fields['control'] = controls[i] if controls is not None else torch.as_tensor(item['control'])
        samples.append(BaseDataElement(**fields, metainfo=dict(item.get('meta', {}))))
    return {'inputs': torch.stack([torch.as_tensor(item['img']) for item in batch]), 'data_samples': samples}


@MODELS.register_module()
class DiffusionDataPreprocessor(BaseDataPreprocessor):
    """Moves a batch to the device and scales uint8 images to [-1, 1] (float inputs pass unchanged)."""

    def forward(self, data: Dict, training: bool = False) -> Dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        if inputs.dtype == torch.uint8:
            inputs = inputs.float() / 127.5 - 1.0
        return {'inputs': inputs, 'data_samples': data.get('data_samples')}


def _build(cfg, what: str):
    if cfg is None or isinstance(cfg, nn.Module):
        return cfg
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        factory = cfg.pop('type')
        if isinstance(factory, str):
            return MODELS.build(dict(type=factory, **cfg))
        return factory(**cfg)
    raise TypeError(f'{what} must be a config dict or an nn.Module, got {type(cfg).__name__}')


def _build_vae(cfg, pretrained: bool):
    if isinstance(cfg, dict) and 'from_pretrained' in cfg:
        cfg = dict(cfg)
        source, factory = cfg.pop('from_pretrained'), cfg.pop('type')
        if pretrained:
            subfolder = cfg.pop('subfolder', None)
            return factory.from_pretrained(source, **({'subfolder': subfolder} if subfolder else {}))
        cfg.pop('subfolder', None)
        return factory(**cfg)
    return _build(cfg, 'vae')


def _check_steps(steps, train_steps: int) -> None:
    """Sampling steps: an integer in [1, num_train_timesteps] (more failed in an IndexError inside the DPM-Solver,
    a float in diffusers' linspace)."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= train_steps:
        raise ValueError(f'num_inference_steps must be an integer in [1, num_train_timesteps={train_steps}], got '
                         f'{steps!r}')


def _check_guidance(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) or \
            not np.isfinite(scale):  # NaN made every sample NaN
        raise ValueError(f'guidance_scale must be a finite number, got {scale!r}')


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


@HOOKS.register_module()
class DiffusionSamplesHook(ShowDirHook):
    """Saves, per test sample, a strip of panels to ``out_dir`` (tools/test.py --show-dir): the control map, the
    base's sample without the control (``compare_base``), the generated sample and the real image, whichever exist,
    each enlarged ``scale`` times with its name above. Videos show their middle frame.

    Args:
        out_dir: Folder to write PNGs to.
        max_images: Stop after this many samples.
        scale: Nearest-neighbour enlargement of each panel (the smoke runs' images are 32 pixels).
    """
    PANELS = (('control', 'control'), ('base_img', 'base alone'), ('pred_img', 'generated'), ('gt_img', 'real'))

    def __init__(self, out_dir: str, max_images: int = 64, scale: int = 4):
        super().__init__(out_dir, max_images)
        self.scale = scale

    @staticmethod
    def _rgb(image) -> np.ndarray:
        image = as_numpy(image)
        if image.ndim == 4:  # [C, T, H, W]
            image = image[:, image.shape[1] // 2]
        image = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
        return np.ascontiguousarray(image.transpose(1, 2, 0)).astype(np.uint8)

    def draw(self, runner, image, sample):
        from PIL import Image, ImageDraw
        panels = [(title, self._rgb(sample.get(key))) for key, title in self.PANELS if sample.get(key) is not None]
        height, width = (s * self.scale for s in panels[0][1].shape[:2])
        canvas = Image.new('RGB', (len(panels) * (width + 4) - 4, height + 16), 'white')
        for i, (title, panel) in enumerate(panels):
            x = i * (width + 4)
            canvas.paste(Image.fromarray(panel).resize((width, height), Image.NEAREST), (x, 16))
            ImageDraw.Draw(canvas).text((x + 2, 2), title, fill='black')
        label = sample.get('gt_label')
        return canvas, (f"index-{sample.metainfo.get('index', self._written)}" if label is None
                        else f'label-{int(label)}')


@MODELS.register_module()
class DiffusionModel(TaskModel):
    """A denoiser trained to predict the noise (or v, or x0), behind mmengine's ``forward(inputs, data_samples, mode)``.

    Args:
        denoiser: Config dict (``type=`` a factory or class) or module.
        num_train_timesteps, beta_schedule, beta_start, beta_end: Training noise (diffusers DDPMScheduler; DiT's
            linear 1e-4..0.02 over 1000 steps by default).
        prediction_type: What the denoiser predicts: 'epsilon' (the noise; DDPM, DiT, PixArt), 'v_prediction'
            (v = sqrt(a_t) noise - sqrt(1 - a_t) x0; Salimans & Ho 2022, Sec. 4) or 'sample' (x0). A noise
            prediction's one-step x0 estimate divides its error by sqrt(a_t), which the linear schedule takes to
            about 0.006 at t = 999: small pixel-space models then start sampling from saturated speckles
            (docs/benchmarks/diffusion_h100_s12.md); v stays well-conditioned at every t.
        sampler: 'dpm_solver' (DPMSolverMultistepScheduler, DPM-Solver++ order 2), 'ddim' or 'ddpm'.
        num_inference_steps: Sampling steps.
        clip_sample: Clip every step's x0 prediction to [-1, 1], as pixel-space DDPM does (Ho et al. 2020); off
            by default, as in DiT and PixArt, whose latents are not bounded. At t near 1000 the linear schedule's
            1 / sqrt(alpha_bar) is about 156, so an unclipped x0 estimate magnifies the noise prediction's error.
        guidance_scale: Classifier-free guidance scale on the noise prediction (1 = none); needs a denoiser with
            a null label (class dropout > 0).
        vae: Optional frozen VAE (config or module, diffusers AutoencoderKL API) for latent diffusion. A config
            may name ``from_pretrained`` (a hub id or folder, e.g. 'stabilityai/sd-vae-ft-ema') beside the
            architecture arguments: the weights are read from it when ``pretrained`` is True, else the architecture
            is built with random weights (tests, or before loading a checkpoint that holds the VAE).
        pretrained: Read the VAE's ``from_pretrained`` weights.
        sample_seed: Sampling noise of item i is drawn from a generator seeded (sample_seed, meta['index']) so a
            sample does not depend on its batch.
        compile_denoiser: Compile the denoiser's forward with ``torch.compile`` (True, or a dict of its keyword
            arguments): the small smoke-run denoisers are otherwise host-bound, about 3,200 kernel launches a
            training step for the 28-block PixArt at width 192. In place (``nn.Module.compile``), so parameter
            names and checkpoints stay those of the eager model. mmengine's ``compile=True`` (the whole
            ``train_step``) fails under AmpOptimWrapper with torch 2.11, whose autocast helper Dynamo cannot trace.
        data_preprocessor: Config; default :class:`DiffusionDataPreprocessor`.
        init_cfg: mmengine initialisation config (none: the denoiser keeps its own initialisation).
    """

    show_hook = DiffusionSamplesHook

    def __init__(self, denoiser: Union[Dict, nn.Module], num_train_timesteps: int = 1000,
                 beta_schedule: str = 'linear', beta_start: float = 1e-4, beta_end: float = 0.02,
                 prediction_type: str = 'epsilon', sampler: str = 'dpm_solver', num_inference_steps: int = 20,
                 clip_sample: bool = False,
                 guidance_scale: float = 1.0,
                 vae: Union[None, Dict, nn.Module] = None, pretrained: bool = True, sample_seed: int = 0,
                 compile_denoiser: Union[bool, Dict] = False,
                 data_preprocessor: Optional[Dict] = None, init_cfg: Optional[Dict] = None):
        if sampler not in SAMPLERS:
            raise ValueError(f'sampler must be one of {SAMPLERS}, got {sampler!r}')
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)) or \
                num_train_timesteps < 1:
            raise ValueError(f'num_train_timesteps must be a positive integer, got {num_train_timesteps!r}')
        _check_steps(num_inference_steps, num_train_timesteps)
        _check_guidance(guidance_scale)
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f'prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}')
        super().__init__(data_preprocessor=data_preprocessor or dict(type=DiffusionDataPreprocessor),
                         init_cfg=init_cfg)
        self.denoiser = _build(denoiser, 'denoiser')
        for name in ('in_channels', 'out_channels', 'num_classes'):
            if not hasattr(self.denoiser, name):
                raise AttributeError(f'the denoiser {type(self.denoiser).__name__} lacks the attribute {name!r} of '
                                     'the denoiser interface')
        if self.denoiser.out_channels not in (self.denoiser.in_channels, 2 * self.denoiser.in_channels):
            raise ValueError(f'denoiser out_channels must be in_channels or 2 x in_channels, got '
                             f'{self.denoiser.out_channels} for {self.denoiser.in_channels}')
        self.pretrained = pretrained
        self.vae = _build_vae(vae, pretrained)
        if self.vae is not None:
            self.vae.requires_grad_(False).eval()
        from diffusers import DDPMScheduler
        self.noise_config = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                 beta_start=beta_start, beta_end=beta_end, prediction_type=prediction_type)
        self.train_scheduler = DDPMScheduler(**self.noise_config, clip_sample=False)
        self.sampler, self.num_inference_steps, self.clip_sample = sampler, num_inference_steps, clip_sample
        self.guidance_scale, self.sample_seed = guidance_scale, sample_seed
        if not isinstance(compile_denoiser, (bool, dict)):
            raise TypeError(f'compile_denoiser must be a bool or a dict of torch.compile arguments, got '
                            f'{type(compile_denoiser).__name__}')
        if compile_denoiser:
            self.denoiser.compile(**(compile_denoiser if isinstance(compile_denoiser, dict) else {}))

    # -- latent space ------------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] to the diffusion space (identity in pixel space)."""
        if self.vae is None:
            return images
        with torch.no_grad():
            return self.vae.encode(images).latent_dist.sample() * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.vae is None:
            return latents
        with torch.no_grad():
            return self.vae.decode(latents / self.vae.config.scaling_factor).sample

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    # -- conditions --------------------------------------------------------------------------------------------
    def _labels(self, data_samples, batch: int, device) -> Optional[torch.Tensor]:
        if self.denoiser.num_classes <= 0:
            return None
        if not data_samples or any(s.get('gt_label') is None for s in data_samples):
            raise ValueError(f'the denoiser is class-conditional ({self.denoiser.num_classes} classes): every data '
                             'sample needs a gt_label')
        several = [i for i, s in enumerate(data_samples) if torch.as_tensor(s.gt_label).numel() != 1]
        if several:  # failed in a reshape
            raise ValueError(f'each data sample needs one gt_label; samples {several} hold '
                             f'{tuple(torch.as_tensor(data_samples[several[0]].gt_label).shape)}')
        labels = torch.stack([torch.as_tensor(s.gt_label).reshape(()) for s in data_samples]).to(device)
        if labels.shape != (batch,):
            raise ValueError(f'{labels.shape[0]} labels for {batch} inputs')
        return labels

    def conditions(self, inputs: torch.Tensor, data_samples) -> Dict:
        """Keyword conditions passed to the denoiser besides y (none here; the controlled model adds control)."""
        return {}

    # -- modes -------------------------------------------------------------------------------------------------
    def _forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> torch.Tensor:
        """The denoiser's prediction on the clean batch at the middle timestep."""
        x0 = self.encode(inputs)
        t = torch.full((x0.shape[0],), self.noise_config['num_train_timesteps'] // 2, device=x0.device)
        return self.denoiser(x0, t, self._labels(data_samples, x0.shape[0], x0.device),
                             **self.conditions(inputs, data_samples))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to predict at x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise (``prediction_type``)."""
        kind = self.noise_config['prediction_type']
        if kind == 'epsilon':
            return noise
        if kind == 'sample':
            return x0
        return self.train_scheduler.get_velocity(x0, noise, t)

    def estimates(self, x_t: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor):
        """The (noise, x0) pair implied by the denoiser's ``prediction`` at x_t, in float32, for any prediction type."""
        alpha = self.train_scheduler.alphas_cumprod.to(x_t.device)[t].float().reshape(-1, *(1,) * (x_t.ndim - 1))
        signal, sigma = alpha.sqrt(), (1 - alpha).sqrt()
        x_t, prediction = x_t.float(), prediction.float()
        kind = self.noise_config['prediction_type']
        if kind == 'epsilon':
            return prediction, (x_t - sigma * prediction) / signal
        if kind == 'sample':
            return (x_t - signal * prediction) / sigma, prediction
        return signal * prediction + sigma * x_t, signal * x_t - sigma * prediction  # v_prediction

    def loss(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None) -> Dict:
        """MSE between the target (the noise by default, see ``prediction_type``) and the first in_channels
        channels of the prediction at uniform random t.

        With learn_sigma/pred_sigma the variance channels get no loss here (DiT and PixArt add the VLB term of
        improved DDPM for them; not implemented: samplers here use only the noise prediction)."""
        x0 = self.encode(inputs)
        batch = x0.shape[0]
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_config['num_train_timesteps'], (batch,), device=x0.device)
        x_t = self.train_scheduler.add_noise(x0, noise, t)
        out = self.denoiser(x_t, t, self._labels(data_samples, batch, x0.device),
                            **self.conditions(inputs, data_samples))
        if out.shape[0] != batch or out.shape[1] != self.denoiser.out_channels or out.shape[2:] != x0.shape[2:]:
            raise ValueError(f'the denoiser returned {tuple(out.shape)}, expected [B, {self.denoiser.out_channels}, '
                             f'{", ".join(map(str, x0.shape[2:]))}]')
        loss = F.mse_loss(out[:, :self.denoiser.in_channels].float(), self.target(x0, noise, t).float())
        return {'loss': loss}

    def _make_scheduler(self):
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
        if self.sampler == 'dpm_solver':
            # diffusers' thresholding with sample_max_value 1 is plain clipping to [-1, 1]
            return DPMSolverMultistepScheduler(**self.noise_config, algorithm_type='dpmsolver++', solver_order=2,
                                               thresholding=self.clip_sample, sample_max_value=1.0)
        if self.sampler == 'ddim':
            return DDIMScheduler(**self.noise_config, clip_sample=self.clip_sample, set_alpha_to_one=True)
        return DDPMScheduler(**self.noise_config, clip_sample=self.clip_sample)

    def _generators(self, batch: int, data_samples) -> List[torch.Generator]:
        """One CPU generator per item, seeded (sample_seed, the item's index): its starting noise and DDPM's
        per-step noise are then the item's own, whatever the batch it is sampled in."""
        generators = []
        for i in range(batch):
            index = i
            if data_samples is not None and 'index' in data_samples[i].metainfo:
                index = int(data_samples[i].metainfo['index'])
            generators.append(torch.Generator().manual_seed(int(np.random.SeedSequence(
                [self.sample_seed, index]).generate_state(1)[0])))
        return generators

    @torch.no_grad()
    def sample(self, shape: Sequence[int], labels: Optional[torch.Tensor] = None, conditions: Optional[Dict] = None,
               data_samples=None, guidance_scale: Optional[float] = None,
               num_inference_steps: Optional[int] = None) -> torch.Tensor:
        """Sample ``shape`` ([B, C, *spatial] in the diffusion space) with the configured sampler; returns x0."""
        device = next(self.denoiser.parameters()).device
        dtype = next(self.denoiser.parameters()).dtype
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        _check_guidance(scale)
        # 0 (or any false value) silently meant the configured number
        steps = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        _check_steps(steps, self.noise_config['num_train_timesteps'])
        if data_samples is not None and len(data_samples) != shape[0]:
            raise ValueError(f'{len(data_samples)} data samples for a batch of {shape[0]}')
        if shape[0] == 0:
            return torch.empty(tuple(shape), device=device, dtype=dtype)
        if scale != 1.0 and labels is None:  # guidance was skipped without a word
            raise ValueError(f'guidance_scale={scale} guides class labels against the null label: this sample has '
                             'no labels (an unconditional denoiser?); use guidance_scale=1')
        guided = scale != 1.0
        if guided:
            from .dit import LabelEmbedder
            if any(isinstance(m, LabelEmbedder) and m.dropout_prob == 0 for m in self.denoiser.modules()):
                raise ValueError(f'guidance_scale={scale} needs the null label of a denoiser trained with class '
                                 'dropout (class_dropout_prob > 0); this one has none: use guidance_scale=1')
        conditions = dict(conditions or {})
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.denoiser.num_classes)])
            conditions = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in conditions.items()}
        scheduler = self._make_scheduler()
        scheduler.set_timesteps(int(steps), device=device)
        generators = self._generators(shape[0], data_samples)
        x = torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(device=device, dtype=dtype)
        x = x * scheduler.init_noise_sigma
        channels = self.denoiser.in_channels
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
            t_batch = t.reshape(1).expand(model_in.shape[0]).to(device)
            # guidance extrapolates whatever is predicted (noise, v or x0): each is affine in the others at fixed x_t
            pred = self.denoiser(model_in, t_batch, labels, **conditions)[:, :channels]
            if guided:
                cond_pred, uncond_pred = pred.chunk(2)
                pred = uncond_pred + scale * (cond_pred - uncond_pred)
            kwargs = {'generator': generators} if self.sampler == 'ddpm' else {}  # per item (diffusers' randn_tensor)
            x = scheduler.step(pred, t, x, **kwargs).prev_sample
        return x

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None):
        """Samples one image per input (its label and conditions); sets ``pred_img`` (uint8 [C, ...]) and, for
        the metrics, ``gt_img`` (the real image, uint8) on each data sample."""
        batch = inputs.shape[0]
        if data_samples is None:
            data_samples = [BaseDataElement(metainfo={'index': i}) for i in range(batch)]
        latent_shape = self.encode(inputs[:1]).shape[1:]
        labels = self._labels(data_samples, batch, inputs.device)
        x0 = self.sample((batch, *latent_shape), labels, self.conditions(inputs, data_samples), data_samples)
        images = _to_uint8(self.decode(x0))
        for sample, image, real in zip(data_samples, images, _to_uint8(inputs)):
            sample.set_data({'pred_img': image, 'gt_img': real})
        return data_samples


@MODELS.register_module()
class ControlledDiffusionModel(DiffusionModel):
    """DiffusionModel for a control net (RelaCtrl): the data samples' ``control`` edge maps (uint8 [1, H, W],
    0/255) become a control image like the input ([-1, 1], repeated to the image's channels, through the VAE in
    latent mode) passed to the denoiser as ``control=``.

    Args:
        compare_base: In predict mode also sample the base alone (no control, same noise) into ``base_img``, so
            the metrics report controlled and uncontrolled fidelity side by side.
        **kwargs: As :class:`DiffusionModel`.
    """

    def __init__(self, *args, compare_base: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.compare_base = compare_base

    def init_weights(self) -> None:
        """Loads the trained base into the control net (its ``load_base``) before training, then the init_cfg."""
        if hasattr(self.denoiser, 'load_base'):
            from visionattn.engine.runner import load_training_checkpoint
            self.denoiser.load_base(loader=load_training_checkpoint)
        super().init_weights()

    def conditions(self, inputs: torch.Tensor, data_samples) -> Dict:
        if not data_samples or any(s.get('control') is None for s in data_samples):
            raise ValueError('a controlled diffusion model needs a control map in every data sample')
        control = torch.stack([s.control for s in data_samples]).to(inputs.device)
        if control.shape[-2:] != inputs.shape[-2:]:
            raise ValueError(f'control maps {tuple(control.shape)} and images {tuple(inputs.shape)} differ in size')
        control = control.float() / 127.5 - 1.0 if control.dtype == torch.uint8 else control.float()
        if control.shape[1] != inputs.shape[1]:
            control = control[:, :1].expand(-1, inputs.shape[1], *(-1,) * (control.ndim - 2))
        return {'control': self.encode(control.to(inputs.dtype))}

    def predict(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None):
        data_samples = super().predict(inputs, data_samples)
        if self.compare_base:
            latent_shape = self.encode(inputs[:1]).shape[1:]
            labels = self._labels(data_samples, inputs.shape[0], inputs.device)
            x0 = self.sample((inputs.shape[0], *latent_shape), labels, {}, data_samples)
            for sample, image in zip(data_samples, _to_uint8(self.decode(x0))):
                sample.set_data({'base_img': image})
        return data_samples
