"""visionattn: a model zoo for efficient-attention computer vision, registered with timm.

``import visionattn`` registers every backbone family with timm, so ``timm.create_model("eca_resnet50")``
works; it never imports the task heads or the training engine.
"""
from . import backbones  # noqa: F401  (registers the models)
from .zoo import is_adopted, list_models, paper_facts

__version__ = '0.1.0'
__all__ = ['list_models', 'is_adopted', 'paper_facts', '__version__']
