# MSMT17 (visionattn.heads.reid.data.MSMT17): 1,041 training identities (list_train.txt), 3,060 test identities, 15
# cameras; the folder with train/, test/ and the list_*.txt files.
from visionattn.heads.reid.data import MSMT17

msmt17_root = 'data/reid/msmt17'
msmt17_num_pids = 1041
msmt17_train = dict(type=MSMT17, data_root=msmt17_root, split='train')
msmt17_query = dict(type=MSMT17, data_root=msmt17_root, split='query')
msmt17_gallery = dict(type=MSMT17, data_root=msmt17_root, split='gallery')
