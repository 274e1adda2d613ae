# Compression data: random crops for training, whole held-out photos (centre-cropped to multiples of 64) for
# evaluation. Default: scikit-image's shipped colour photos with the fixed split of visionattn.heads.compression.data
# (train: rocket, hubble_deep_field, immunohistochemistry, retina, stereo_motorcycle, colorwheel; held out:
# astronaut, chelsea, coffee). For a real run point the sets at image folders:
#   --cfg-options train_dataloader.dataset.data_root=DIR val_dataloader.dataset.data_root=KODAK_DIR
from mmengine.dataset import DefaultSampler, InfiniteSampler
from visionattn.heads.compression.data import CompressionCropDataset, CompressionEvalDataset
from visionattn.heads.compression.evaluation import RateDistortionMetric
from visionattn.heads.compression.task import compression_collate

crop_size = 256
train_dataloader = dict(
    batch_size=16, num_workers=4, persistent_workers=True,
    sampler=dict(type=InfiniteSampler, shuffle=True),
    collate_fn=dict(type=compression_collate),
    dataset=dict(type=CompressionCropDataset, data_root=None, crop_size=crop_size, length=100000, seed=0),
)
val_dataloader = dict(
    batch_size=1, num_workers=1,  # photos differ in size
    sampler=dict(type=DefaultSampler, shuffle=False),
    collate_fn=dict(type=compression_collate),
    dataset=dict(type=CompressionEvalDataset, data_root=None, multiple=64, mode='crop'),
)
test_dataloader = val_dataloader
val_evaluator = dict(type=RateDistortionMetric)
test_evaluator = dict(type=RateDistortionMetric, baselines=('JPEG', 'WEBP'))
