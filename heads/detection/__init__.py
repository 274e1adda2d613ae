"""Object detection: Focus-DETR (ICCV 2023) on any zoo backbone, the whole task.

Modules: ``focus_detr`` (the network), ``criterion`` (its set criterion and foreground supervision), ``matcher`` (the
Hungarian matcher, SciPy), ``convert`` and ``weights`` (the official checkpoints) need PyTorch, timm and SciPy only
and are imported here; ``data`` (COCO-format and synthetic datasets, DETR's augmentation), ``task`` (collate,
preprocessor, the mmengine task model, the ``--show-dir`` hook and the datasets' registrations) and ``evaluation``
(COCO box AP through pycocotools) need the ``[train]`` extra; all of it is the ``[detection]`` extra;
``mmdet_compat`` needs mmdetection. This file imports none of the last four.
"""
from .convert import convert_focus_detr_official
from .criterion import FocusDETRCriterion, foreground_targets
from .focus_detr import FOCUS_DETR_R50_PARAMS, FocusDETR, FocusDETRDecoder, FocusDETREncoder, prepare_for_cdn
from .matcher import HungarianMatcher
from .weights import FOCUS_DETR_WEIGHTS, create_focus_detr_official, load_focus_detr_official

__all__ = ['FocusDETR', 'FocusDETREncoder', 'FocusDETRDecoder', 'FocusDETRCriterion', 'HungarianMatcher',
           'foreground_targets', 'prepare_for_cdn',
           'convert_focus_detr_official', 'FOCUS_DETR_R50_PARAMS', 'FOCUS_DETR_WEIGHTS',
           'load_focus_detr_official', 'create_focus_detr_official']
