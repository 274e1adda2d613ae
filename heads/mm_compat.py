"""Zoo backbones for OpenMMLab toolboxes (mmdetection, mmsegmentation) on mmengine.

Two routes put a zoo model in an mmdet/mmseg config:

1. The toolboxes' own timm wrappers. ``import visionattn`` registers every zoo model with timm, and mmseg's
   ``TIMMBackbone`` (``mmseg.models.backbones.timm_backbone``) and mmpretrain's ``TIMMBackbone`` (which mmdet configs
   reach as ``type='mmpretrain.TIMMBackbone'``) build their backbone with ``timm.create_model(model_name=...,
   features_only=..., pretrained=..., in_chans=..., checkpoint_path=..., **kwargs)``, so
   ``custom_imports=dict(imports=['visionattn'])`` is all they need (:data:`TIMM_BACKBONE_KWARGS` is that call).
2. :class:`ZooBackbone`, an mmengine ``BaseModule`` with mmdet's backbone options (``out_indices``,
   ``frozen_stages``, ``norm_eval``, ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)`` read through
   visionattn's safe loader with strict key checking). Importing ``visionattn.heads.detection.mmdet_compat`` or
   ``visionattn.heads.segmentation.mmseg_compat`` (a config's ``custom_imports``) registers it in that toolbox's
   MODELS registry; it is also always registered in mmengine's root MODELS registry, which every OpenMMLab
   registry falls back to.

Both toolboxes need a full mmcv build with its compiled ops (``mmcv._ext``); mmcv-lite is not enough, and mmcv 2.1 only
builds from source on the project's machines (15-25 minutes, with setuptools < 81 and -std=c++20), so CI does not
build it: the tests exercise the registration where the toolbox imports (and against a stand-in registry), and otherwise
the error, which names the module that is actually missing (``mmcv._ext``, ``ftfy``, the toolbox itself, ...). Where
mmdet/mmseg import, the tests also train and run their RetinaNet and UPerNet on ZooBackbone; ``tools/mm_smoke.py``
runs both through mmengine's Runner (docs/mm_toolboxes.md: the build, and what a CPU run gave).
"""
import importlib
import logging
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.registry import MODELS as MMENGINE_MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from visionattn.hub import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint_file,
    summarise_keys,
    unwrap_state_dict,
)

from .segmentation.decoders import FeatureBackbone

__all__ = ['ZooBackbone', 'register_zoo_backbone', 'TOOLBOXES', 'TIMM_BACKBONE_KWARGS']

_logger = logging.getLogger(__name__)

# toolbox package -> the module holding its MODELS registry
TOOLBOXES = {'mmdet': 'mmdet.registry', 'mmseg': 'mmseg.registry'}
# import name -> what to install, for the error message
_INSTALL_HINTS = {'mmdet': 'mmdet', 'mmseg': 'mmsegmentation', 'mmpretrain': 'mmpretrain', 'ftfy': 'ftfy',
                  'regex': 'regex', 'mmcv': 'mmcv (a full build with its compiled ops; mmcv-lite is not enough)'}
# The keyword arguments with which mmseg's and mmpretrain's TIMMBackbone call timm.create_model (route 1 above).
TIMM_BACKBONE_KWARGS = ('model_name', 'features_only', 'pretrained', 'in_chans', 'checkpoint_path')

_FEATURE_PREFIX = 'features.model.'
# Per-level output norms of the zoo families' features_only models (BiFormer's extra_norms, NAT/DiNAT's feature_norms):
# entry i normalises feature level i, so it is frozen with that level's stage, as mmdet's Swin freezes norm{i}.
_LEVEL_NORMS = re.compile(r'^(?:extra_norms|feature_norms)\.(\d+)\.')


def _under(name: str, module: str) -> bool:
    return name == module or name.startswith(module + '.')


def _check_out_indices(model_name: str, out_indices: Sequence[int], kwargs: Dict) -> Tuple[int, ...]:
    """``out_indices`` as a tuple, refused naming the problem where timm would fail without saying why (an index
    past the last level, a repeat) or return the maps in another order than the channels reported for them."""
    if isinstance(out_indices, (int, str)) or not isinstance(out_indices, Sequence):
        raise TypeError(f'out_indices must be a sequence of feature levels, e.g. (1, 2, 3), got {out_indices!r}')
    indices = tuple(out_indices)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in indices):
        raise TypeError(f'out_indices={out_indices!r}: feature levels are integers')
    try:
        with torch.device('meta'):
            levels = len(timm.create_model(model_name, pretrained=False, **kwargs).feature_info)
    except Exception:  # an unknown name or a bad keyword: FeatureBackbone names it
        return indices
    bad = [i for i in indices if not -levels <= i < levels]
    if bad:
        raise ValueError(f'out_indices={indices}: {model_name} has feature levels 0 to {levels - 1} (or -{levels} to '
                         f'-1), so {", ".join(map(str, bad))} is out of range')
    plain = [i % levels for i in indices]
    if len(set(plain)) != len(plain):
        raise ValueError(f'out_indices={indices} names a feature level twice')
    if plain != sorted(plain):
        raise ValueError(f'out_indices={indices} must be in increasing order: the feature maps come in the model\'s '
                         'order of levels')
    return indices


class ZooBackbone(BaseModule):
    """A zoo/timm model as an OpenMMLab backbone: returns the tuple of NCHW feature maps the necks and heads take.

    Stages are the model's feature levels of stride >= 4 (``feature_info``: ``layer1..4`` of a ResNet,
    ``stages.0..3`` / ``levels.0..3`` of the zoo families); the stem is every parameter registered before the first
    stage.

    Args:
        model_name: timm or visionattn model name, e.g. 'biformer_s'.
        out_indices: Feature levels as timm numbers them (``feature_info``); default the last four of stride >= 4.
            The zoo families' levels 0..3 are strides 4..32, as in mmdet's backbones, but a timm ResNet's level 0
            is its stride-2 stem, so its layer1..4 are 1..4.
        pretrained: Load the model's pretrained (ImageNet) weights through timm (exclusive with a Pretrained
            ``init_cfg``).
        frozen_stages: Freeze the stem (0) and also the first ``frozen_stages`` stages, each with its per-level
            output norm where the family has one (as mmdet's Swin freezes ``norm{i}``): no gradients, kept in eval
            mode; -1 freezes nothing, as in mmdet.
        norm_eval: Keep every BatchNorm layer (incl. SyncBatchNorm) in eval mode under ``train()``, so that its
            running statistics stay fixed, as mmdet's backbones do.
        init_cfg: mmengine init config. ``dict(type='Pretrained', checkpoint=PATH, prefix=None, strict=True)`` is
            loaded by :meth:`init_weights` through :func:`visionattn.hub.load_checkpoint_file` (no pickled code
            runs); the file holds this backbone's ``state_dict`` or the timm model's (its classifier and
            other modules the feature extractor drops are ignored). ``prefix`` keeps only the keys under it and
            strips it (a detector checkpoint: ``prefix='backbone.'``). Other init types go to mmengine.
        **kwargs: Extra keyword arguments of ``timm.create_model`` (drop_path_rate, n_win, ...).
    """

    def __init__(self, model_name: str, out_indices: Optional[Sequence[int]] = None, pretrained: bool = False,
                 frozen_stages: int = -1, norm_eval: bool = False,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None, **kwargs):
        if pretrained and any(c.get('type') == 'Pretrained' for c in self._init_cfgs(init_cfg)):
            raise ValueError('give the weights either by pretrained=True or by init_cfg=dict(type=\'Pretrained\'), '
                             'not both')
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
            raise TypeError(f'frozen_stages must be an integer (-1 for none), got {frozen_stages!r}')
        if out_indices is not None:
            out_indices = _check_out_indices(model_name, out_indices, kwargs)
        super().__init__(init_cfg=init_cfg)
        self.model_name = model_name
        # one level is enough for mmdet's single-level heads (DETR, Conditional-DETR, DAB-DETR: out_indices=(3,))
        self.features = FeatureBackbone(model_name, out_indices, pretrained, backbone_kwargs=kwargs, min_levels=1)
        self.channels = self.features.channels
        self.strides = self.features.strides
        self.out_indices = tuple(out_indices) if out_indices is not None else tuple(self.features.levels)
        self.stage_modules = self._stage_modules()
        if not -1 <= frozen_stages <= len(self.stage_modules):
            raise ValueError(f'frozen_stages={frozen_stages} is out of range: {model_name} has '
                             f'{len(self.stage_modules)} stages ({", ".join(self.stage_modules)}); use -1 to '
                             f'{len(self.stage_modules)}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    @staticmethod
    def _init_cfgs(init_cfg) -> List[Dict]:
        if init_cfg is None:
            return []
        return [dict(c) for c in (init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg])]

    # --- stages ---------------------------------------------------------------------------------------------------

    def _stage_modules(self) -> List[str]:
        """Names (in the timm model) of the stage modules: feature levels of stride >= 4, in order."""
        info = self.features.model.feature_info
        dicts = list(getattr(info, 'info', None) or info.get_dicts())
        names = []
        for d in dicts:
            if d['reduction'] >= 4 and d['module'] not in names:
                names.append(d['module'])
        return names

    def _timm_name(self, name: str) -> List[str]:
        """The names a parameter of the feature extractor may have in the timm model (and so in its checkpoints)."""
        inner = name[len(_FEATURE_PREFIX):] if name.startswith(_FEATURE_PREFIX) else name
        candidates = [inner]
        if inner.startswith('model.'):  # FeatureGetterNet wraps the whole model
            candidates.append(inner[len('model.'):])
        head, _, rest = inner.partition('.')
        # FeatureListNet flattens one level of nesting: 'stages.0' becomes 'stages_0'
        for i in [m.start() for m in re.finditer('_', head)]:
            candidates.append(head[:i] + '.' + head[i + 1:] + ('.' + rest if rest else ''))
        return candidates

    def _stage_of(self) -> Dict[str, int]:
        """Parameter name -> 0 for the stem, i + 1 for stage i, absent for what follows the stages (norms, heads)."""
        params = list(self.features.model.named_parameters())
        stage_index = {}
        for name, _ in params:
            for i, module in enumerate(self.stage_modules):
                if any(_under(c, module) for c in self._timm_name(name)):
                    stage_index[name] = i + 1
                    break
        first = next((k for k, (name, _) in enumerate(params) if name in stage_index), len(params))
        for name, _ in params[:first]:
            stage_index.setdefault(name, 0)
        levels = self._level_modules()
        for name, _ in params:
            match = next((m for m in map(_LEVEL_NORMS.match, self._timm_name(name)) if m), None)
            if match and int(match.group(1)) < len(levels) and levels[int(match.group(1))] in self.stage_modules:
                stage_index.setdefault(name, self.stage_modules.index(levels[int(match.group(1))]) + 1)
        return {_FEATURE_PREFIX + k: v for k, v in stage_index.items()}

    def _level_modules(self) -> List[str]:
        """The stage module of every feature level of the wrapped model (its own ``feature_info``, all levels)."""
        inner = getattr(self.features.model, 'model', None)
        info = getattr(inner, 'feature_info', None)
        return [d['module'] for d in info] if isinstance(info, (list, tuple)) else []

    def frozen_parameter_names(self) -> List[str]:
        """Names (in this module) of the parameters ``frozen_stages`` freezes."""
        return [k for k, v in self._stage_of().items() if v <= self.frozen_stages]

    def _frozen_modules(self) -> List[nn.Module]:
        frozen = set(self.frozen_parameter_names())
        # the smallest modules whose parameters are all frozen (stem modules and whole stages)
        out = []
        for name, module in self.named_modules():
            own = [(name + '.' if name else '') + p for p, _ in module.named_parameters()]
            if own and all(p in frozen for p in own) and not any(_under(name, m) for m in [o[0] for o in out]):
                out.append((name, module))
        return [m for _, m in out]

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = set(self.frozen_parameter_names())
        for name, param in self.named_parameters():
            if name in frozen:
                param.requires_grad_(False)
        for module in self._frozen_modules():
            nn.Module.train(module, False)  # the base method: this module's own train() would come back here

    def train(self, mode: bool = True) -> 'ZooBackbone':
        """Set train mode, keeping the frozen stages and (with ``norm_eval``) every BatchNorm in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    # --- weights --------------------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        """Run the init config: a Pretrained entry loads through visionattn's safe loader, the rest goes to mmengine."""
        cfgs = self._init_cfgs(self.init_cfg)
        pretrained = [c for c in cfgs if c.get('type') == 'Pretrained']
        others = [c for c in cfgs if c.get('type') != 'Pretrained']
        if others:
            saved, self.init_cfg = self.init_cfg, others
            try:
                super().init_weights()
            finally:
                self.init_cfg = saved
        for cfg in pretrained:
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'), strict=cfg.get('strict', True))
        self._is_init = True

    def load_pretrained(self, checkpoint: str, prefix: Optional[str] = None, strict: bool = True) -> None:
        """Load weights from a local checkpoint file (never running pickled code).

        Args:
            checkpoint: Path of a ``.pth``/``.safetensors`` file holding this backbone's or the timm model's weights
                (bare, or wrapped in 'state_dict'/'model' and 'module.').
            prefix: Keep only the keys under this prefix and strip it, e.g. 'backbone.' for a detector checkpoint.
            strict: Fail on a missing, unexpected or mis-shaped key, naming the file; nothing is loaded then.

        Raises:
            CheckpointError: ``checkpoint`` is a URL, or not a readable checkpoint file.
            CheckpointMismatchError: The checkpoint does not fit (strict), holds none of the weights, or holds a
                non-tensor or integer/bool values for a floating-point weight (strict or not: they would be cast in
                without a word).
        """
        if re.match(r'^[a-z][a-z0-9+.-]*://', str(checkpoint)):
            raise CheckpointError(f'init_cfg Pretrained checkpoint {checkpoint!r} is a URL: ZooBackbone reads a local '
                                  'file (download it first), or takes timm\'s weights with pretrained=True')
        raw = unwrap_state_dict(load_checkpoint_file(checkpoint))
        if prefix:
            prefix = prefix if prefix.endswith('.') else prefix + '.'
            found = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
            if not found:
                raise CheckpointMismatchError(
                    f'checkpoint {checkpoint} has no keys under prefix {prefix!r} (it has e.g. '
                    f'{", ".join(list(raw)[:5])})')
            raw = found
        own = self.state_dict()
        state, used, missing, mismatched, wrong_kind = {}, set(), [], [], []
        for key, value in own.items():
            source = next((c for c in [key, *self._timm_name(key)] if c in raw), None)
            if source is None:
                missing.append(key)
                continue
            used.add(source)
            got = raw[source]
            if not isinstance(got, torch.Tensor):  # a number, a string, a numpy array read as a placeholder
                wrong_kind.append(f'{source}: checkpoint holds a {type(got).__name__}, not a tensor')
                continue
            if tuple(got.shape) != tuple(value.shape):
                mismatched.append(f'{source}: checkpoint {tuple(got.shape)} vs model {tuple(value.shape)}')
                continue
            if value.is_floating_point() and not (got.is_floating_point() or got.is_complex()):
                # integer or bool values would be cast into the weights without a word
                wrong_kind.append(f'{source}: checkpoint dtype {got.dtype} vs model {value.dtype}')
                continue
            state[key] = raw[source]
        # keys of modules the feature extractor dropped (classifier, final norm, ...) are not errors
        kept_tops = {c.split('.')[0] for key in own for c in [key, *self._timm_name(key)]}
        unexpected = [k for k in raw if k not in used and k.split('.')[0] in kept_tops]
        ignored = [k for k in raw if k not in used and k.split('.')[0] not in kept_tops]
        if not state or wrong_kind or (strict and (missing or unexpected or mismatched)):
            lines = [f'checkpoint {checkpoint} does not fit ZooBackbone({self.model_name!r}); nothing was loaded.']
            for label, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                                ('shape mismatches', mismatched), ('not weights of the model\'s kind', wrong_kind)):
                if keys:
                    lines.append(f'  {label} ({len(keys)}): {", ".join(keys[:12])}'
                                 + (f', ... ({len(keys) - 12} more)' if len(keys) > 12 else ''))
            raise CheckpointMismatchError('\n'.join(lines))
        self.load_state_dict(state, strict=False)
        if missing or unexpected or mismatched:
            # strict=False loads what fits; what does not is a warning with the keys (as mmengine's load_checkpoint
            # warns), not an info line that default logging hides: a mis-shaped layer stays at initialisation.
            parts = [f'{label} ({len(keys)}): {summarise_keys(keys, 6)}' for label, keys in (
                ('missing', missing), ('unexpected', unexpected), ('mis-shaped, left at initialisation', mismatched))
                if keys]
            _logger.warning('loaded %s into ZooBackbone(%r) with strict=False; %s', checkpoint, self.model_name,
                            '; '.join(parts))
        if ignored:
            _logger.info('loaded %s into ZooBackbone(%r); not used: %d keys of modules the feature extractor drops',
                         checkpoint, self.model_name, len(ignored))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.features(x))


def _describe_import_error(toolbox: str, error: BaseException) -> str:
    missing = getattr(error, 'name', None)
    if isinstance(error, ImportError) and missing:
        if missing == 'mmcv._ext' or missing.startswith('mmcv._ext'):
            need = ('a full mmcv build with its compiled ops (mmcv._ext is missing: mmcv-lite lacks it); install '
                    'mmcv from source')
        else:
            top = missing.split('.')[0]
            need = f'the module {missing!r}, which is not installed (pip install {_INSTALL_HINTS.get(top, top)})'
        return f'{toolbox} does not import here: it needs {need}'
    return f'{toolbox} does not import here ({type(error).__name__}: {error})'


def register_zoo_backbone(toolbox: str, force: bool = False) -> None:
    """Register :class:`ZooBackbone` in a toolbox's MODELS registry, so that its configs can say
    ``backbone=dict(type='ZooBackbone', model_name='biformer_s', frozen_stages=1, norm_eval=True)`` (the neck's
    in_channels: ``ZooBackbone(...).channels``).

    Args:
        toolbox: 'mmdet' or 'mmseg'.
        force: Replace an earlier registration.

    Raises:
        ImportError: When the toolbox does not import; the message names the module that is missing.
    """
    if toolbox not in TOOLBOXES:
        raise ValueError(f'unknown toolbox {toolbox!r}; choose from {sorted(TOOLBOXES)}')
    try:
        registry = importlib.import_module(TOOLBOXES[toolbox]).MODELS
        importlib.import_module(f'{toolbox}.models')  # the part that needs mmcv's compiled ops
    except (ImportError, AssertionError) as error:  # mmdet/mmseg assert their mmcv version range on import
        raise ImportError(f'registering the zoo backbones with {toolbox} failed: '
                          f'{_describe_import_error(toolbox, error)}. visionattn\'s own heads and tools need neither '
                          f'({type(error).__name__}: {error})') from error
    registry.register_module(name='ZooBackbone', module=ZooBackbone, force=force)


# Every OpenMMLab registry falls back to mmengine's root MODELS registry, so this makes type='ZooBackbone' buildable
# from any of them (and from mmengine itself) once this module is imported.
MMENGINE_MODELS.register_module(name='ZooBackbone', module=ZooBackbone, force=True)

