"""Pieces of timm's model API that every zoo family shares (no model is registered here).

- :class:`FeatureGetter`: timm's ``FeatureGetterNet`` (the ``features_only`` wrapper of the zoo families) plus the
  ``set_grad_checkpointing`` that timm's other feature wrappers (``FeatureListNet``) and the models have, so that a
  detector or segmenter can turn gradient checkpointing on in its backbone.
- :func:`check_classifier_pool`: ``num_classes > 0`` with ``global_pool=''`` put a linear classifier on the unpooled
  [B, C, H, W] map, which failed only at the first forward, in a matmul whose message named neither argument.
"""
from timm.models._features import FeatureGetterNet

__all__ = ['FeatureGetter', 'check_classifier_pool']


class FeatureGetter(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` with ``set_grad_checkpointing``, passed on to the wrapped model."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def check_classifier_pool(num_classes: int, global_pool: str, family: str) -> None:
    """Raise ValueError when a classifier (``num_classes > 0``) would get the unpooled map (``global_pool=''``)."""
    if num_classes > 0 and not global_pool:
        raise ValueError(
            f"{family}: global_pool='' keeps the [batch, channels, height, width] feature map, which the linear "
            f'classifier (num_classes={num_classes}) cannot take; pass num_classes=0 with global_pool=\'\' for the '
            "unpooled features, or a pooling such as global_pool='avg' for a classifier")
