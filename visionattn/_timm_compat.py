"""The one place that imports timm's private helpers, so a timm refactor breaks a single file."""
from timm.models._builder import resolve_pretrained_cfg

__all__ = ['resolve_pretrained_cfg']
