# S2LIC, MS-SSIM variant at quality 3 (loss = lambda * (1 - MS-SSIM) + bpp). CompressAI's MS-SSIM ladder for
# qualities 1..6 is lambda = 2.40, 4.58, 8.73, 16.64, 31.73, 60.50; change model.lmbda for the other qualities.
#   python tools/train.py configs/compression/s2lic_q3_msssim_1xb16-1m_skimage-256.py
from mmengine.config import read_base

with read_base():
    from ._base_.s2lic_recipe import *

model.update(lmbda=8.73, metric='ms-ssim')
