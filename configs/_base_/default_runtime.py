# Runtime shared by every task: hooks, logging, visualisation backends, randomness, distributed settings.
from mmengine.hooks import DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer

from visionattn.engine import DatasetEpochHook, ProgressBarHook, RandomStateHook, SafeCheckpointHook, TrainingCurveHook

default_scope = 'visionattn'
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, interval=50),
    param_scheduler=dict(type=ParamSchedulerHook),
    # deletes old checkpoints only once the new one is complete and recorded: safe with max_keep_ckpts=1
    checkpoint=dict(type=SafeCheckpointHook, interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type=DistSamplerSeedHook),
)
custom_hooks = [
    dict(type=RandomStateHook),
    dict(type=DatasetEpochHook),
    dict(type=ProgressBarHook),
    dict(type=TrainingCurveHook),
]
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))  # tools/train.py switches to gloo where there is no GPU
visualizer = dict(type=Visualizer, vis_backends=[dict(type=LocalVisBackend), dict(type=TensorboardVisBackend)])
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, deterministic=False)
