"""The glue between visionattn and mmengine: registries, task models, data preprocessing, metrics, hooks and the
runner the tools use. The only library package that imports mmengine (the ``[train]`` extra)."""
from . import datasets  # noqa: F401  (registers the data package's datasets)
from .classification import ClsDataPreprocessor, check_model_name
from .config_checks import ConfigError, apply_cfg_options, read_config
from .detection import (
    CocoMetric,
    DetDataPreprocessor,
    Detector,
    DetPredictionImagesHook,
    det_collate,
)
from .hooks import (
    DatasetEpochHook,
    PredictionImagesHook,
    ProgressBarHook,
    RandomStateHook,
    SafeCheckpointHook,
    TrainingCurveHook,
)
from .metrics import Accuracy
from .optim import AGCOptimWrapper
from .registry import DATA_SAMPLERS, DATASETS, FUNCTIONS, HOOKS, METRICS, MODELS
from .runner import (
    VisionRunner,
    WorkDirInUseError,
    check_config,
    find_resume_checkpoint,
    load_tool_config,
    load_training_checkpoint,
    lock_work_dir,
    plain_checkpoint,
)
from .samplers import RepeatAugSampler
from .segmentation import (
    IoUMetric,
    SegCrossEntropyLoss,
    SegDataPreprocessor,
    Segmentor,
    SegPredictionImagesHook,
    seg_collate,
)

__all__ = [
    'ConfigError', 'apply_cfg_options', 'read_config',
    'ClsDataPreprocessor', 'check_model_name', 'DatasetEpochHook',
    'PredictionImagesHook', 'ProgressBarHook', 'RandomStateHook', 'SafeCheckpointHook', 'TrainingCurveHook',
    'Accuracy', 'AGCOptimWrapper', 'RepeatAugSampler', 'DATA_SAMPLERS',
    'DATASETS', 'FUNCTIONS', 'HOOKS', 'METRICS', 'MODELS', 'VisionRunner', 'check_config', 'find_resume_checkpoint',
    'load_tool_config', 'load_training_checkpoint', 'lock_work_dir', 'plain_checkpoint', 'WorkDirInUseError',
    'CocoMetric', 'DetDataPreprocessor', 'DetPredictionImagesHook', 'Detector', 'det_collate',
    'IoUMetric', 'SegCrossEntropyLoss', 'SegDataPreprocessor', 'SegPredictionImagesHook', 'Segmentor', 'seg_collate',
]
