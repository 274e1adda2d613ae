# Market-1501 (visionattn.heads.reid.data.Market1501): 751 training identities (12,936 images), 6 cameras; query 3,368,
# gallery 19,732 (distractors and junk handled by the dataset and the metric). Point market1501_root at the folder
# holding bounding_box_train/, query/ and bounding_box_test/.
from visionattn.heads.reid.data import Market1501

market1501_root = 'data/reid/market1501'
market1501_num_pids = 751
market1501_train = dict(type=Market1501, data_root=market1501_root, split='train')
market1501_query = dict(type=Market1501, data_root=market1501_root, split='query')
market1501_gallery = dict(type=Market1501, data_root=market1501_root, split='gallery')
