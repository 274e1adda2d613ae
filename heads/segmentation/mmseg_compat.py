"""Zoo backbones for mmsegmentation configs, where mmsegmentation is installed (see ``visionattn.heads.mm_compat``
for the two routes and why the test suite sees mmsegmentation only through a stand-in registry without it).

An mmsegmentation config names any zoo backbone in its own segmentors; importing this module registers
``ZooBackbone`` in mmseg's MODELS registry::

    custom_imports = dict(imports=['visionattn.heads.segmentation.mmseg_compat'])  # registers on import
    model = dict(type='EncoderDecoder',
                 backbone=dict(type='ZooBackbone', model_name='nat_tiny', frozen_stages=-1, norm_eval=False,
                               init_cfg=dict(type='Pretrained', checkpoint='nat_tiny.pth')),
                 decode_head=dict(type='UPerHead', in_channels=[64, 128, 256, 512], ...), ...)

or, without this module, mmseg's own ``backbone=dict(type='TIMMBackbone', model_name='nat_tiny', pretrained=False)``
with ``custom_imports = dict(imports=['visionattn'])``. ``tools/mm_smoke.py`` trains and tests a UPerNet through
either route (docs/mm_toolboxes.md). Without mmsegmentation importing, the import raises an ImportError naming the
module that is missing.
"""
from ..mm_compat import ZooBackbone, register_zoo_backbone

__all__ = ['register_mmseg_backbones', 'ZooBackbone']


def register_mmseg_backbones(force: bool = False) -> None:
    """Register :class:`ZooBackbone` in mmsegmentation's MODELS registry; ImportError (naming what is missing)
    without mmsegmentation."""
    register_zoo_backbone('mmseg', force=force)


# An mmseg config's `custom_imports` imports this module: it registers then, and says why it cannot without mmseg.
register_mmseg_backbones(force=True)
