# The classic ResNet schedule (He et al. 2016, as ECA-Net trains it): SGD with momentum 0.9, weight decay 1e-4,
# batch 256, lr 0.1 divided by 10 every 30 epochs, 100 epochs.
from mmengine.optim import MultiStepLR, OptimWrapper
from torch.optim import SGD

max_epochs = 100
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=SGD, lr=0.1, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type=MultiStepLR, by_epoch=True, milestones=[30, 60, 90], gamma=0.1)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=256, enable=False)
