# S2LIC, quality 2 of CompressAI's MSE ladder (lambda 0.0035: loss = lambda * 255^2 * MSE + bpp).
#   python tools/train.py configs/compression/s2lic_q2_mse_1xb16-1m_skimage-256.py
#   python tools/test.py configs/compression/s2lic_q2_mse_1xb16-1m_skimage-256.py CHECKPOINT
from mmengine.config import read_base

with read_base():
    from ._base_.s2lic_recipe import *

model.update(lmbda=0.0035)
