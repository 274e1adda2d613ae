# The ParaTransCNN/TransUNet schedule: SGD lr 0.01, momentum 0.9, weight decay 1e-4 on every parameter, poly decay
# (power 0.9) to 0 per iteration over 150 epochs, no warm-up. (The official loop sets the poly lr after each step,
# so its lr lags this one by one iteration.)
from mmengine.optim import OptimWrapper, PolyLR
from torch.optim import SGD

max_epochs = 150
optim_wrapper = dict(type=OptimWrapper, optimizer=dict(type=SGD, lr=0.01, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type=PolyLR, power=0.9, eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
                        convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=4, enable=False)
