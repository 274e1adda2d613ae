# CORE-ReID source pre-training (official source_pretrain.py): Adam lr 3.5e-4, weight decay 5e-4; per-epoch lr
# steps: linear warm-up from 1% over 10 epochs, x0.1 at epochs 40 and 70; 120 epochs of 200 PK batches (64 images,
# 4 per identity) at 256x128. Augmentation: flip, pad 10 + random crop, grayscale patch replacement 0.4 (no random
# erasing in this stage). Evaluated every 5 epochs.
from mmengine.dataset import DefaultSampler
from mmengine.optim import LinearLR, MultiStepLR, OptimWrapper
from torch.optim import Adam
from visionattn.heads.reid.data import reid_transforms
from visionattn.heads.reid.evaluation import PKSampler, ReIDMetric, reid_collate

max_epochs = 120
iters_per_epoch = 200
batch_size = 64
num_instances = 4
img_size = (256, 128)
train_pipeline = dict(type=reid_transforms, train=True, img_size=img_size, random_erasing=0.0, gray_patch=0.4)
test_pipeline = dict(type=reid_transforms, train=False, img_size=img_size)
pk_sampler = dict(type=PKSampler, batch_size=batch_size, num_instances=num_instances, num_batches=iters_per_epoch)
test_loader_base = dict(batch_size=128, num_workers=4, sampler=dict(type=DefaultSampler, shuffle=False),
                        collate_fn=dict(type=reid_collate))
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=Adam, lr=3.5e-4, weight_decay=5e-4))
# end=11: mmengine reaches end_factor after end - begin - 1 steps; the official factor is 0.01 + 0.99 * epoch / 10
param_scheduler = [dict(type=LinearLR, start_factor=0.01, end_factor=1.0, by_epoch=True, begin=0, end=11),
                   dict(type=MultiStepLR, milestones=[40, 70], gamma=0.1, by_epoch=True)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=5)
val_cfg = dict()
test_cfg = dict()
val_evaluator = dict(type=ReIDMetric)
test_evaluator = val_evaluator
auto_scale_lr = dict(base_batch_size=64, enable=False)
