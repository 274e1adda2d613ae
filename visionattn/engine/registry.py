"""visionattn's registries: children of mmengine's, so configs may name classes by string in scope 'visionattn'
as well as by the class itself (the pure-Python configs do the latter)."""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

__all__ = ['MODELS', 'DATASETS', 'DATA_SAMPLERS', 'METRICS', 'HOOKS', 'FUNCTIONS']

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='visionattn',
                  locations=['visionattn.engine.classification', 'visionattn.engine.segmentation',
                             'visionattn.engine.medical', 'visionattn.engine.reid', 'visionattn.engine.diffusion',
                             'visionattn.engine.compression', 'visionattn.engine.detection'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='visionattn',
                    locations=['visionattn.engine.datasets', 'visionattn.engine.medical',
                               'visionattn.engine.reid_eval', 'visionattn.engine.diffusion',
                               'visionattn.engine.compression'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope='visionattn',
                         locations=['visionattn.engine.reid_eval'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='visionattn',
                   locations=['visionattn.engine.metrics', 'visionattn.engine.segmentation',
                               'visionattn.engine.medical', 'visionattn.engine.reid_eval',
                               'visionattn.engine.diffusion', 'visionattn.engine.compression',
                               'visionattn.engine.detection'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='visionattn',
                 locations=['visionattn.engine.hooks', 'visionattn.engine.reid', 'visionattn.engine.detection'])
FUNCTIONS = Registry('function', parent=MMENGINE_FUNCTIONS, scope='visionattn',
                     locations=['visionattn.engine.classification', 'visionattn.engine.segmentation',
                                'visionattn.engine.reid_eval', 'visionattn.engine.diffusion',
                                'visionattn.engine.compression', 'visionattn.engine.detection'])
