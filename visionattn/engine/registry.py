"""visionattn's registries: children of mmengine's, so configs may name classes by string in scope 'visionattn'
as well as by the class itself (the pure-Python configs do the latter).

Every mmengine root registry has a child in scope 'visionattn', as in mmdetection's ``registry.py``: with
``default_scope = 'visionattn'`` the runner builds its optimizer, schedulers, visualizer, log processor and the rest
through them (they fall back to mmengine's classes), instead of warning "Failed to search registry with scope
visionattn" once for each.
"""
from mmengine import registry as mmengine_registry
from mmengine.registry import Registry

__all__ = [
    'MODELS', 'DATASETS', 'DATA_SAMPLERS', 'METRICS', 'HOOKS', 'FUNCTIONS', 'RUNNERS', 'RUNNER_CONSTRUCTORS', 'LOOPS',
    'TRANSFORMS', 'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'EVALUATOR', 'TASK_UTILS', 'VISUALIZERS', 'VISBACKENDS',
    'LOG_PROCESSORS', 'INFERENCERS', 'STRATEGIES',
]

SCOPE = 'visionattn'


def _child(name: str, locations=()) -> Registry:
    parent = getattr(mmengine_registry, name)
    return Registry(parent.name, parent=parent, scope=SCOPE, locations=list(locations))


MODELS = _child('MODELS', ['visionattn.engine.classification', 'visionattn.heads.classification.task',
                           'visionattn.heads.segmentation.task',
                           'visionattn.heads.segmentation.medical_task', 'visionattn.heads.reid.task',
                           'visionattn.heads.diffusion.task', 'visionattn.heads.compression.task',
                           'visionattn.heads.detection.task'])
DATASETS = _child('DATASETS', ['visionattn.heads.classification.task',
                               'visionattn.heads.segmentation.task', 'visionattn.heads.segmentation.medical_task',
                               'visionattn.heads.reid.evaluation', 'visionattn.heads.diffusion.task',
                               'visionattn.heads.compression.task', 'visionattn.heads.detection.task'])
DATA_SAMPLERS = _child('DATA_SAMPLERS', ['visionattn.heads.reid.evaluation', 'visionattn.engine.samplers'])
OPTIM_WRAPPERS = _child('OPTIM_WRAPPERS', ['visionattn.engine.optim'])
OPTIM_WRAPPER_CONSTRUCTORS = _child('OPTIM_WRAPPER_CONSTRUCTORS', ['visionattn.heads.compression.task'])
METRICS = _child('METRICS', ['visionattn.engine.metrics', 'visionattn.heads.segmentation.evaluation',
                             'visionattn.heads.segmentation.medical_task', 'visionattn.heads.reid.evaluation',
                             'visionattn.heads.diffusion.evaluation', 'visionattn.heads.compression.evaluation',
                             'visionattn.heads.detection.evaluation'])
HOOKS = _child('HOOKS', ['visionattn.engine.hooks', 'visionattn.heads.segmentation.task', 'visionattn.heads.reid.task',
                         'visionattn.heads.diffusion.task', 'visionattn.heads.detection.task'])
FUNCTIONS = _child('FUNCTIONS', ['visionattn.heads.classification.task', 'visionattn.heads.segmentation.task',
                                 'visionattn.heads.reid.evaluation', 'visionattn.heads.diffusion.task',
                                 'visionattn.heads.compression.task', 'visionattn.heads.detection.task'])
TASK_UTILS = _child('TASK_UTILS', ['visionattn.heads.detection.task'])  # Focus-DETR's matcher
# What the runner builds from mmengine's own classes: children without classes of their own.
RUNNERS = _child('RUNNERS')
RUNNER_CONSTRUCTORS = _child('RUNNER_CONSTRUCTORS')
LOOPS = _child('LOOPS')
TRANSFORMS = _child('TRANSFORMS')
MODEL_WRAPPERS = _child('MODEL_WRAPPERS')
WEIGHT_INITIALIZERS = _child('WEIGHT_INITIALIZERS')
OPTIMIZERS = _child('OPTIMIZERS')
PARAM_SCHEDULERS = _child('PARAM_SCHEDULERS')
EVALUATOR = _child('EVALUATOR')
VISUALIZERS = _child('VISUALIZERS')
VISBACKENDS = _child('VISBACKENDS')
LOG_PROCESSORS = _child('LOG_PROCESSORS')
INFERENCERS = _child('INFERENCERS')
STRATEGIES = _child('STRATEGIES')
