# Synthetic "pedestrians" (visionattn.heads.reid.data.SyntheticPedestrians) for smoke runs: identity = clothing colours
# and texture, camera = colour shift, and a 'target' domain with its own identities and a colour cast (the domain
# gap). 16 identities x 2 cameras x 4 images per split at 64x32; query/gallery hold 16 other identities.
from visionattn.heads.reid.data import SyntheticPedestrians

synthetic_num_ids = 16
_synthetic = dict(type=SyntheticPedestrians, num_ids=synthetic_num_ids, num_cams=2, per_cam=4, img_size=(64, 32),
                  seed=0)
synthetic_source_train = dict(**_synthetic, domain='source', split='train')
synthetic_source_query = dict(**_synthetic, domain='source', split='query')
synthetic_source_gallery = dict(**_synthetic, domain='source', split='gallery')
synthetic_target_train = dict(**_synthetic, domain='target', split='train')
synthetic_target_query = dict(**_synthetic, domain='target', split='query')
synthetic_target_gallery = dict(**_synthetic, domain='target', split='gallery')
