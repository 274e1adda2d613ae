"""Zoo backbones for mmdetection configs, where mmdetection is installed (see ``visionattn.heads.mm_compat`` for
why the test suite only sees the error without it).

An mmdetection config then names any zoo backbone in its own detectors (DINO, Deformable DETR, RetinaNet, ...)::

    custom_imports = dict(imports=['visionattn.heads.detection.mmdet_compat'])  # registers on import
    model = dict(type='DINO', backbone=dict(type='ZooBackbone', model_name='nat_tiny', out_indices=(1, 2, 3)),
                 neck=dict(type='ChannelMapper', in_channels=[128, 256, 512], ...), ...)

(``ZooBackbone(name).channels`` gives the neck's in_channels.) ``tools/mm_smoke.py`` trains mmdet's RetinaNet this
way, with the FPN neck, for a few iterations and scores it with CocoMetric (docs/mm_toolboxes.md).

Focus-DETR itself is not registered as a subclass of mmdet's DINO: ours is built on visionattn's deformable
attention and trains through visionattn's own Detector and tools; a DINO subclass on mmcv's ops is not written (mmcv
was built here for the CPU only, docs/mm_toolboxes.md): its foreground token selector would need a new mmdet encoder
layer (the selector scoring the encoder's tokens before each layer).
"""
from ..mm_compat import ZooBackbone, register_zoo_backbone

__all__ = ['register_mmdet_backbones', 'ZooBackbone']


def register_mmdet_backbones(force: bool = False) -> None:
    """Register :class:`ZooBackbone` in mmdetection's MODELS registry; ImportError without mmdetection."""
    register_zoo_backbone('mmdet', force=force)


# An mmdet config's `custom_imports` imports this module: it registers then, and says why it cannot without mmdet.
register_mmdet_backbones(force=True)
