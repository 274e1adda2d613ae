"""Conversion of official Focus-DETR checkpoints (detrex / detectron2 layout) to :class:`FocusDETR`'s state dict.

The official checkpoints (``focus_detr_r50_4scale_*.pth`` etc.) are detectron2 ``Checkpointer`` files,
``{'model': state_dict, 'trainer': ..., 'iteration': ...}``. Their keys, as the official modules register them
(huawei-noah/noah-research ``Focus-DETR/projects/focus_detr/modeling/focus_detr.py``, ``focus_detr_transformer.py``,
``transformer_layer.py``; detrex ``detrex/layers/{attention,multi_scale_deform_attn,mlp}.py``,
``detrex/modeling/neck/channel_mapper.py``; detectron2 ``detectron2/modeling/backbone/resnet.py``):

- backbone (detectron2 ResNet, FrozenBN buffers ``weight``/``bias``/``running_mean``/``running_var``):
  ``backbone.stem.conv1.weight``, ``backbone.stem.conv1.norm.*``, ``backbone.res{2-5}.{i}.conv{1-3}.weight``,
  ``backbone.res{k}.{i}.conv{j}.norm.*``, ``backbone.res{k}.0.shortcut.weight``, ``backbone.res{k}.0.shortcut.norm.*``;
  here timm's ResNet inside :class:`FeatureBackbone`: ``backbone.model.conv1``, ``backbone.model.bn1``,
  ``backbone.model.layer{k-1}.{i}.conv{j}`` / ``bn{j}``, ``downsample.0`` / ``downsample.1``;
- ``neck.convs.{i}.conv|norm.*``, ``neck.extra_convs.0.conv|norm.*``;
- ``transformer.{alpha, level_embeds, tgt_embed.weight, enc_output.*, enc_output_norm.*, enc_mask_predictor.*}``,
  ``transformer.encoder.layers.{i}.{attentions.0.attn.*, attentions.1.*, ffns.0.layers.*, norms.{0,1}.*, norm2.*}``,
  ``transformer.decoder.layers.{i}.{attentions.0.attn.*, attentions.1.*, ffns.0.layers.*, norms.{0-2}.*}``,
  ``transformer.decoder.ref_point_head.layers.{0,1}.*``, ``transformer.decoder.norm.*``;
- ``class_embed.{0-6}.*``, ``bbox_embed.{0-6}.layers.{0-2}.*``, ``label_enc.weight``;
- aliases of the heads, registered a second time by the official model and dropped here:
  ``transformer.decoder.class_embed.*``, ``transformer.decoder.bbox_embed.*``, ``transformer.encoder.enhance_MCSP.*``
  and ``enhance_MCSP_layerlist.*`` (all ``class_embed[6]``).

Everything but the backbone and the aliases keeps its name. The converted dict loads strictly into a model built
with ``freeze_bn=True`` (FrozenBN has no ``num_batches_tracked``).
"""
import re
from typing import Dict, Mapping

import torch

__all__ = ['convert_focus_detr_official', 'OFFICIAL_ALIAS_PREFIXES']

OFFICIAL_ALIAS_PREFIXES = ('transformer.decoder.class_embed.', 'transformer.decoder.bbox_embed.',
                           'transformer.encoder.enhance_MCSP.', 'enhance_MCSP_layerlist.')

_RES = re.compile(r'^backbone\.res(\d)\.(\d+)\.(conv(\d)|shortcut)\.(weight|norm\.(\w+))$')


def _unwrap(checkpoint: Mapping) -> Mapping:
    for key in ('model', 'state_dict'):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def _backbone_key(key: str) -> str:
    if key.startswith('backbone.model.'):  # already ours
        return key
    if key == 'backbone.stem.conv1.weight':
        return 'backbone.model.conv1.weight'
    if key.startswith('backbone.stem.conv1.norm.'):
        return 'backbone.model.bn1.' + key[len('backbone.stem.conv1.norm.'):]
    m = _RES.match(key)
    if m is None:  # a backbone of another layout: keep its names under FeatureBackbone's ``model``
        return 'backbone.model.' + key[len('backbone.'):]
    stage, block, part, conv, tail, norm = m.groups()
    prefix = f'backbone.model.layer{int(stage) - 1}.{block}.'
    if part == 'shortcut':
        return prefix + ('downsample.0.weight' if norm is None else f'downsample.1.{norm}')
    return prefix + (f'conv{conv}.weight' if norm is None else f'bn{conv}.{norm}')


def convert_focus_detr_official(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """Official Focus-DETR state dict (or detectron2 checkpoint with a ``'model'`` entry) -> ours.

    Renames the detectron2 ResNet keys to timm's, drops the aliased head copies and any ``num_batches_tracked``,
    strips a DDP ``module.`` prefix and keeps every other key.
    """
    state = _unwrap(checkpoint)
    out = {}
    for key, value in state.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        if key.startswith(OFFICIAL_ALIAS_PREFIXES) or key.endswith('num_batches_tracked'):
            continue
        out[_backbone_key(key) if key.startswith('backbone.') else key] = value
    return out
