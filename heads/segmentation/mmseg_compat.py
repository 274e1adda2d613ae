"""Zoo backbones for mmsegmentation configs, where mmsegmentation is installed (see ``visionattn.heads.mm_compat``
for why the test suite only sees the error without it)."""
from ..mm_compat import ZooBackbone, register_zoo_backbone

__all__ = ['register_mmseg_backbones', 'ZooBackbone']


def register_mmseg_backbones(force: bool = False) -> None:
    """Register :class:`ZooBackbone` in mmsegmentation's MODELS registry
    (``backbone=dict(type='ZooBackbone', model_name='biformer_s')``); ImportError without mmsegmentation."""
    register_zoo_backbone('mmseg', force=force)
