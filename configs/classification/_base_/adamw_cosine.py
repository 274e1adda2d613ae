# AdamW with linear warm-up then cosine decay, per iteration; no weight decay on norms, biases and other 1-D
# parameters. A family with relative-position tables adds their names to paramwise_cfg.custom_keys (NAT's attn.rpb,
# PATNet's rpe_table: the Swin convention, the tables the models list in no_weight_decay()); here they would name
# parameters the other families lack, which the engine refuses. Epoch counts and lr are overridden by each config.
from mmengine.optim import CosineAnnealingLR, LinearLR, OptimWrapper
from torch.optim import AdamW

max_epochs = 300
warmup_epochs = 5
optim_wrapper = dict(
    type=OptimWrapper,
    optimizer=dict(type=AdamW, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs, convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=1e-5, by_epoch=True, begin=warmup_epochs, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024, enable=False)
