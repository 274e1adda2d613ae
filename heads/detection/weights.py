"""The official Focus-DETR checkpoints and a strict loader for them.

The table is the official README's (huawei-noah/noah-research ``Focus-DETR/README.md`` at ``aa0f80c``, identical
to IDEA-Research/detrex ``projects/focus_detr/README.md`` at ``e244e6c``): COCO val2017 box AP of each release, 100
denoising queries, 4 scales. The files are detectron2 ``Checkpointer`` files (``{'model': state_dict, ...}``);
most are published as ``.zip`` archives holding the ``.pth`` (the README says to unzip them), which
:func:`visionattn.hub.extract_checkpoint` unpacks after checking every member name. No checksum is published, so
downloads are not verified against one.

What loads into :class:`~.focus_detr.FocusDETR`:

- **R50 / R101**: exactly. detectron2's ResNet (``stride_in_1x1=False``, FrozenBN, as the official configs set
  it) is timm's ``resnet50`` / ``resnet101`` up to the key names, which :func:`~.convert.convert_focus_detr_official`
  renames; build the model with ``num_classes=80`` and ``freeze_bn=True`` (the defaults), or use
  :func:`create_focus_detr_official`.
- **Swin**: refused, before anything is downloaded. The official backbone is detectron2's ``SwinTransformer``
  (``out_indices=(1, 2, 3)``), which puts a LayerNorm on every output level (``backbone.norm1..3``) and keeps its
  patch merging at the end of each stage; timm's ``features_only`` Swin returns un-normed stage outputs and has no
  such parameters, so no renaming makes the checkpoint fit, and loading it without those norms would feed the neck
  other features than it was trained on.

The official model normalises RGB 0-255 input with mean (123.675, 116.28, 103.53) and std (58.395, 57.12,
57.375), i.e. ImageNet's mean/std on 0-1 input, after resizing the short side to 800 (long side at most 1333).
Licence: the repository's Apache-2.0 (``Focus-DETR/LICENSE``); the weights carry no licence of their own.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from visionattn.hub import (
    CheckpointError,
    CheckpointMismatchError,
    check_state_dict,
    download_weights,
    extract_checkpoint,
    load_checkpoint_file,
)

from .convert import convert_focus_detr_official

__all__ = ['FocusDETRWeights', 'FOCUS_DETR_WEIGHTS', 'load_focus_detr_official', 'create_focus_detr_official',
           'read_focus_detr_checkpoint']

_RELEASE = 'https://github.com/linxid/Focus-DETR-mindspore/releases/download/Focus-DETR/'
_SWIN_REFUSAL = ('its backbone is detectron2\'s SwinTransformer, whose per-level output LayerNorms '
                 '(backbone.norm1..3) timm\'s features_only Swin does not have, so the checkpoint cannot load into '
                 'FocusDETR exactly; only the R50 and R101 checkpoints load')


@dataclass(frozen=True)
class FocusDETRWeights:
    """One official release.

    Args:
        url: Download address ('' where the README links nothing).
        backbone: The official backbone as the README names it.
        pretrain: The backbone's ImageNet pre-training.
        epochs: COCO training epochs.
        box_ap: COCO val2017 box AP the README reports.
        timm_backbone: The timm backbone that takes these weights exactly, or None where they cannot load.
        config: The official config (under ``projects/focus_detr/configs/``).
        license: Licence of the weights.
        note: Anything odd about the release.
    """
    url: str
    backbone: str
    pretrain: str
    epochs: int
    box_ap: float
    timm_backbone: Optional[str]
    config: str
    license: str = 'apache-2.0'
    note: str = ''


def _resnet(depth: int, epochs: int, ap: float, file: str) -> FocusDETRWeights:
    return FocusDETRWeights(_RELEASE + file, f'R-{depth}', 'IN1k', epochs, ap, f'resnet{depth}',
                            f'focus_detr_resnet/focus_detr_r{depth}_4scale_{epochs}ep.py')


def _swin(size: str, epochs: int, ap: float, url: str, pretrain: str = 'IN1k', config: str = '',
          note: str = '') -> FocusDETRWeights:
    return FocusDETRWeights(url, f'Swin-{size}', pretrain, epochs, ap, None, config, note=note)


FOCUS_DETR_WEIGHTS: Dict[str, FocusDETRWeights] = {
    'focus_detr_r50_4scale_12ep': _resnet(50, 12, 48.8, 'focus_detr_r50_4scale_12ep.zip'),
    'focus_detr_r50_4scale_24ep': _resnet(50, 24, 50.3, 'focus_detr_r50_4scale_24ep.zip'),
    'focus_detr_r50_4scale_36ep': _resnet(50, 36, 50.4, 'focus_detr_r50_4scale_36ep_v3.zip'),
    'focus_detr_r101_4scale_12ep': _resnet(101, 12, 50.8, 'focus_detr_r101_4scale_12ep.zip'),
    'focus_detr_r101_4scale_24ep': _resnet(101, 24, 51.2, 'focus_detr_r101_4scale_24ep.zip'),
    'focus_detr_r101_4scale_36ep': _resnet(101, 36, 51.4, 'focus_detr_r101_4scale_36ep_v2.zip'),
    'focus_detr_swin_tiny_224_4scale_12ep': _swin(
        'Tiny-224', 12, 50.0, _RELEASE + 'focus_detr_swin_tiny_224_4scale_12ep.zip',
        config='focus_detr_swin/focus_detr_swin_tiny_224_4scale_12ep.py'),
    'focus_detr_swin_tiny_224_4scale_24ep': _swin(
        'Tiny-224', 24, 51.2, _RELEASE + 'focus_detr_swin_tiny_224_4scale_24ep.zip',
        config='focus_detr_swin/focus_detr_swin_tiny_224_4scale_24ep.py'),
    'focus_detr_swin_tiny_224_4scale_36ep': _swin(
        'Tiny-224', 36, 52.5,
        'https://github.com/IDEA-Research/detrex-storage/releases/download/v0.1.1/focus_detr_swin_tiny_224_4scale_12ep.pth',
        config='focus_detr_swin/focus_detr_swin_tiny_224_4scale_36ep.py',
        note='the README links a file named ..._12ep.pth for this 36-epoch row (likely a mislabel)'),
    'focus_detr_swin_tiny_224_4scale_22k_36ep': _swin(
        'Tiny-224', 36, 53.2, '', 'IN22k to IN1k', 'focus_detr_swin/focus_detr_swin_tiny_224_4scale_22k_36ep.py',
        note='the README links no file'),
    'focus_detr_swin_base_384_4scale_22k_36ep': _swin(
        'Base-384', 36, 56.2, _RELEASE + 'focus_detr_swin_base_384_4scale_22k_36ep.pth', 'IN22k to IN1k',
        'focus_detr_swin/focus_detr_swin_base_384_4scale_36ep.py'),
    'focus_detr_swin_large_384_4scale_22k_36ep': _swin(
        'Large-384', 36, 56.3, '', 'IN22k to IN1k', 'focus_detr_swin/focus_detr_swin_large_384_4scale_36ep.py',
        note='the README links no file'),
}


def _is_url(value: str) -> bool:
    return value.startswith(('http://', 'https://', 'file://'))


def read_focus_detr_checkpoint(name_or_path: Union[str, Path], cache_dir: Optional[Union[str, Path]] = None,
                               progress: bool = True, member: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Read an official checkpoint (a :data:`FOCUS_DETR_WEIGHTS` name, a URL, or a local ``.pth``/``.zip``) without
    running pickled code and return it in :class:`FocusDETR`'s layout (not yet checked against a model).

    Raises:
        CheckpointError: The release has no file or a Swin backbone, or the file is missing, corrupted or unsafe.
    """
    source = str(name_or_path)
    if source in FOCUS_DETR_WEIGHTS:
        entry = FOCUS_DETR_WEIGHTS[source]
        if entry.timm_backbone is None:
            raise CheckpointError(f'{source} cannot be loaded: {_SWIN_REFUSAL}')
        if not entry.url:
            raise CheckpointError(f'{source} has no published checkpoint ({entry.note})')
        path = download_weights(entry.url, cache_dir, progress)
    elif _is_url(source):
        path = download_weights(source, cache_dir, progress)
    elif source.startswith('focus_detr_'):
        raise CheckpointError(f'unknown Focus-DETR release {source!r}; known: {", ".join(FOCUS_DETR_WEIGHTS)}')
    else:
        path = Path(source)
    checkpoint = load_checkpoint_file(extract_checkpoint(path, member))
    state = checkpoint.get('model', checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f'found no weights in {path} (top-level entries: {found})')
    if any(k.startswith(('backbone.patch_embed.', 'backbone.layers.', 'module.backbone.layers.')) for k in state):
        raise CheckpointError(f'checkpoint {path} holds a Swin Focus-DETR: {_SWIN_REFUSAL}')
    return convert_focus_detr_official(checkpoint)


def _hints(message: str) -> str:
    hints = []
    if 'num_batches_tracked' in message:
        hints.append('the official backbone uses FrozenBN: build FocusDETR with freeze_bn=True')
    if 'class_embed' in message or 'label_enc' in message:
        hints.append('the official COCO checkpoints have num_classes=80')
    if 'backbone.model.layer3.' in message:
        hints.append('R50 has 6 res4 blocks, R101 23: pick backbone="resnet50" or "resnet101" to match')
    return message + ''.join(f'\n  hint: {h}' for h in hints)


def load_focus_detr_official(model: nn.Module, name_or_path: Union[str, Path],
                             cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                             member: Optional[str] = None) -> nn.Module:
    """Load an official Focus-DETR checkpoint into ``model`` strictly and return the model.

    Args:
        model: A :class:`FocusDETR` built as the release (``backbone='resnet50'`` or ``'resnet101'``,
            ``num_classes=80``, ``freeze_bn=True``); on the ``meta`` device the tensors are assigned.
        name_or_path: A :data:`FOCUS_DETR_WEIGHTS` name, a URL (downloaded through the cache, with a progress bar)
            or a local ``.pth`` / ``.zip``.
        cache_dir: Download cache (torch hub's ``checkpoints`` by default).
        progress: Show a download progress bar.
        member: The archive member to use when a ``.zip`` holds several checkpoints.

    Raises:
        CheckpointMismatchError: The weights do not fit the model; the message names every missing, unexpected and
            mis-shaped key, and nothing is loaded.
        CheckpointError: See :func:`read_focus_detr_checkpoint`.
    """
    state = read_focus_detr_checkpoint(name_or_path, cache_dir, progress, member)
    try:
        check_state_dict(state, model, source=f'Focus-DETR checkpoint {name_or_path}')
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(_hints(str(e))) from None
    meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(state, strict=True, assign=meta)
    return model


def create_focus_detr_official(name: str, cache_dir: Optional[Union[str, Path]] = None, progress: bool = True,
                               **kwargs) -> nn.Module:
    """A :class:`FocusDETR` built as the official release ``name`` (its backbone, 80 classes) with its weights.

    ``kwargs`` go to :class:`FocusDETR` (inference settings such as ``num_select`` or
    ``encoder=dict(focus_rho=0.3)``; anything that changes a parameter shape makes the load fail with the keys
    named).
    """
    from .focus_detr import FocusDETR
    if name not in FOCUS_DETR_WEIGHTS:
        raise CheckpointError(f'unknown Focus-DETR release {name!r}; known: {", ".join(FOCUS_DETR_WEIGHTS)}')
    entry = FOCUS_DETR_WEIGHTS[name]
    if entry.timm_backbone is None:
        raise CheckpointError(f'{name} cannot be loaded: {_SWIN_REFUSAL}')
    kwargs.setdefault('num_classes', 80)
    model = FocusDETR(entry.timm_backbone, **kwargs)
    return load_focus_detr_official(model, name, cache_dir, progress).eval()
