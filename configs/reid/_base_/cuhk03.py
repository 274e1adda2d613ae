# CUHK03 under the new protocol (cuhk03-np, detected boxes; visionattn.heads.reid.data.CUHK03): 767 training identities,
# 700 test identities, 2 cameras.
from visionattn.heads.reid.data import CUHK03

cuhk03_root = 'data/reid/cuhk03'
cuhk03_num_pids = 767
cuhk03_train = dict(type=CUHK03, data_root=cuhk03_root, split='train', variant='detected')
cuhk03_query = dict(type=CUHK03, data_root=cuhk03_root, split='query', variant='detected')
cuhk03_gallery = dict(type=CUHK03, data_root=cuhk03_root, split='gallery', variant='detected')
