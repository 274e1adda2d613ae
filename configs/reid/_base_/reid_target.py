# CORE-ReID target fine-tuning (official target_train.py): Adam lr 3.5e-4 (constant; a fresh optimizer every epoch,
# see ClusteringHook.reset_optimizer), weight decay 5e-4; 80 epochs of 400 PK batches (4 images per pseudo-identity;
# batch 128 as the official scripts, 64 by default there) at 256x128; clustering before every epoch. Augmentation:
# flip, pad 10 + random crop, grayscale patch replacement 0.4, random erasing 0.5. Evaluated every epoch.
from mmengine.dataset import DefaultSampler
from mmengine.optim import OptimWrapper
from torch.optim import Adam
from visionattn.heads.reid.data import reid_transforms
from visionattn.heads.reid.evaluation import PKSampler, ReIDMetric, reid_collate

max_epochs = 80
iters_per_epoch = 400
batch_size = 128
num_instances = 4
img_size = (256, 128)
train_pipeline = dict(type=reid_transforms, train=True, img_size=img_size, random_erasing=0.5, gray_patch=0.4)
test_pipeline = dict(type=reid_transforms, train=False, img_size=img_size)
pk_sampler = dict(type=PKSampler, batch_size=batch_size, num_instances=num_instances, num_batches=iters_per_epoch)
test_loader_base = dict(batch_size=128, num_workers=4, sampler=dict(type=DefaultSampler, shuffle=False),
                        collate_fn=dict(type=reid_collate))
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=Adam, lr=3.5e-4, weight_decay=5e-4))
param_scheduler = []
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
val_evaluator = dict(type=ReIDMetric)
test_evaluator = val_evaluator
