# CORE-ReID target fine-tuning DukeMTMC-reID -> Market-1501 with ResNet-101 (the official scripts' backbone for the
# ECAB/BMFN runs), K = 700 clusters per view (scripts/run_duke2market_101*.sh), from the checkpoint of
# source_r101_dukemtmc.py; otherwise core_reid_r101_cuhk03_to_market1501.py: the official schedule
# (configs/reid/_base_/reid_target.py), 80 epochs x 400 PK batches of 128, mean teacher, clustering every epoch.
#   python tools/train.py configs/reid/source_r101_dukemtmc.py
#   python tools/train.py configs/reid/core_reid_r101_dukemtmc_to_market1501.py
from mmengine.config import read_base

with read_base():
    from .core_reid_r101_cuhk03_to_market1501 import *

model.update(source_checkpoint='work_dirs/source_r101_dukemtmc/epoch_120.pth')
