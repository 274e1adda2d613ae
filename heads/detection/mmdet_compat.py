"""Zoo backbones for mmdetection configs, where mmdetection is installed (see ``visionattn.heads.mm_compat`` for
why the test suite only sees the error without it).

An mmdetection config then names any zoo backbone in its own detectors (DINO, Deformable DETR, RetinaNet, ...)::

    custom_imports = dict(imports=['visionattn.heads.detection.mmdet_compat'])  # registers on import
    model = dict(type='DINO', backbone=dict(type='ZooBackbone', model_name='nat_tiny', out_indices=(1, 2, 3)),
                 neck=dict(type='ChannelMapper', in_channels=[192, 384, 768], ...), ...)

Focus-DETR itself is not registered as a subclass of mmdet's DINO: ours is built on visionattn's deformable
attention and trains through visionattn's own Detector and tools, and a DINO subclass on mmcv's ops could not be
built or tested on the project's machines (no mmcv build); its foreground token selector would need a new mmdet
encoder layer (the selector scoring the encoder's tokens before each layer), left for a machine with mmcv.
"""
from ..mm_compat import ZooBackbone, register_zoo_backbone

__all__ = ['register_mmdet_backbones', 'ZooBackbone']


def register_mmdet_backbones(force: bool = False) -> None:
    """Register :class:`ZooBackbone` in mmdetection's MODELS registry; ImportError without mmdetection."""
    register_zoo_backbone('mmdet', force=force)


# An mmdet config's `custom_imports` imports this module: it registers then, and says why it cannot without mmdet.
register_mmdet_backbones(force=True)
