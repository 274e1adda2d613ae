# DukeMTMC-reID (visionattn.heads.reid.data.DukeMTMC): 702 training identities (16,522 images), 8 cameras; query 2,228,
# gallery 17,661. The Market-1501 folder layout.
from visionattn.heads.reid.data import DukeMTMC

dukemtmc_root = 'data/reid/dukemtmc-reid'
dukemtmc_num_pids = 702
dukemtmc_train = dict(type=DukeMTMC, data_root=dukemtmc_root, split='train')
dukemtmc_query = dict(type=DukeMTMC, data_root=dukemtmc_root, split='query')
dukemtmc_gallery = dict(type=DukeMTMC, data_root=dukemtmc_root, split='gallery')
