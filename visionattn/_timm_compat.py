"""The one place that imports timm's private helpers, so a timm refactor breaks a single file."""
from timm.models._builder import resolve_pretrained_cfg
from timm.models._registry import get_arch_name

__all__ = ['resolve_pretrained_cfg', 'get_arch_name']
