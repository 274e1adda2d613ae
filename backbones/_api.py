"""Pieces of timm's model API that every zoo family shares (no model is registered here).

- :class:`FeatureGetter`: timm's ``FeatureGetterNet`` (the ``features_only`` wrapper of the zoo families) plus the
  ``set_grad_checkpointing`` that timm's other feature wrappers (``FeatureListNet``) and the models have, so that a
  detector or segmenter can turn gradient checkpointing on in its backbone.
- :func:`feature_cfg_for`: the ``feature_cfg`` of a family's ``features_only`` model, honouring a ``feature_cls`` asked
  for only where timm's module-hook and FX extractors see the same maps as ``forward_intermediates``.
- :func:`check_classifier_pool`: ``num_classes > 0`` with ``global_pool=''`` put a linear classifier on the unpooled
  [B, C, H, W] map, which failed only at the first forward, in a matmul whose message named neither argument; a
  ``num_classes`` that is not an int >= 0 is refused by name.
"""
from typing import Any, Dict, Optional

from timm.models._features import FeatureGetterNet

__all__ = ['FeatureGetter', 'check_classifier_pool', 'feature_cfg_for']


class FeatureGetter(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` with ``set_grad_checkpointing``, passed on to the wrapped model."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def check_classifier_pool(num_classes: int, global_pool: str, family: str) -> None:
    """Raise ValueError for a ``num_classes`` that is not an int >= 0 (``timm.create_model`` refuses those too; a
    ``reset_classifier(-1)`` gave a model with ``num_classes == -1``, ``True`` or ``2.5`` failed inside
    ``torch.empty``), or when a classifier (``num_classes > 0``) would get the unpooled map (``global_pool=''``)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f'{family}: num_classes={num_classes!r} must be an int >= 0 (0: no classifier)')
    if num_classes > 0 and not global_pool:
        raise ValueError(
            f"{family}: global_pool='' keeps the [batch, channels, height, width] feature map, which the linear "
            f'classifier (num_classes={num_classes}) cannot take; pass num_classes=0 with global_pool=\'\' for the '
            "unpooled features, or a pooling such as global_pool='avg' for a classifier")


def feature_cfg_for(kwargs: Dict[str, Any], family: str, out_indices: Any = None,
                    hook_refusal: Optional[str] = None) -> Dict[str, Any]:
    """The ``feature_cfg`` for ``build_model``, taking ``feature_cls`` out of ``kwargs`` (timm would let it win).

    ``out_indices`` None means every stage: one level per entry of the model's ``depths`` (a three-stage model asked
    for level 3 and failed, naming out_indices the user never gave), or four levels for a model without ``depths``.

    The default, ``'getter'`` and timm's ``FeatureGetterNet`` give :class:`FeatureGetter` (``forward_intermediates``,
    with ``set_grad_checkpointing``); a subclass of ``FeatureGetterNet`` is kept. timm's other extractors ('list',
    'dict', 'hook', 'fx') take the output of each ``feature_info`` module: allowed (flattening the stage Sequential,
    as timm's own models do, so that 'list'/'dict' find ``stages.i``) unless ``hook_refusal`` says why those outputs
    are not the features, in which case a ValueError names it instead of a silent mismatch with ``feature_info``.
    """
    if out_indices is None:
        out_indices = tuple(range(len(kwargs['depths']) if 'depths' in kwargs else 4))
    if not kwargs.get('features_only'):  # a stray feature_cls stays in kwargs: the model's TypeError names it
        return dict(out_indices=out_indices, feature_cls=FeatureGetter)
    feature_cls = kwargs.pop('feature_cls', None)
    if feature_cls is None or feature_cls is FeatureGetterNet or (
            isinstance(feature_cls, str) and feature_cls.lower() == 'getter'):
        return dict(out_indices=out_indices, feature_cls=FeatureGetter)
    if isinstance(feature_cls, type) and issubclass(feature_cls, FeatureGetterNet):
        return dict(out_indices=out_indices, feature_cls=feature_cls)
    if hook_refusal is not None:
        raise ValueError(f"{family}: features_only with feature_cls={feature_cls!r} would return the output of each "
                         f"feature_info module, and {hook_refusal}; leave feature_cls out (or pass 'getter') for "
                         'the features that feature_info describes')
    return dict(out_indices=out_indices, feature_cls=feature_cls, flatten_sequential=True)
