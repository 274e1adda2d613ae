"""The glue between visionattn and mmengine: registries, task models, data preprocessing, metrics, hooks and the
runner the tools use. The only library package that imports mmengine (the ``[train]`` extra)."""
from .classification import ClsDataPreprocessor, check_model_name
from .config_checks import ConfigError, apply_cfg_options, read_config
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

__all__ = [
    'ConfigError', 'apply_cfg_options', 'read_config',
    'ClsDataPreprocessor', 'check_model_name', 'DatasetEpochHook',
    'PredictionImagesHook', 'ProgressBarHook', 'RandomStateHook', 'SafeCheckpointHook', 'TrainingCurveHook',
    'Accuracy', 'AGCOptimWrapper', 'RepeatAugSampler', 'DATA_SAMPLERS',
    'DATASETS', 'FUNCTIONS', 'HOOKS', 'METRICS', 'MODELS', 'VisionRunner', 'check_config', 'find_resume_checkpoint',
    'load_tool_config', 'load_training_checkpoint', 'lock_work_dir', 'plain_checkpoint', 'WorkDirInUseError',
]
