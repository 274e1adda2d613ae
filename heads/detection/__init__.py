"""Object detection heads: Focus-DETR (ICCV 2023) on any zoo backbone, its Hungarian matcher and set criterion."""
from .convert import convert_focus_detr_official
from .criterion import FocusDETRCriterion, foreground_targets
from .focus_detr import FOCUS_DETR_R50_PARAMS, FocusDETR, prepare_for_cdn
from .matcher import HungarianMatcher
from .weights import FOCUS_DETR_WEIGHTS, create_focus_detr_official, load_focus_detr_official

__all__ = ['FocusDETR', 'FocusDETRCriterion', 'HungarianMatcher', 'foreground_targets', 'prepare_for_cdn',
           'convert_focus_detr_official', 'FOCUS_DETR_R50_PARAMS', 'FOCUS_DETR_WEIGHTS',
           'load_focus_detr_official', 'create_focus_detr_official']
