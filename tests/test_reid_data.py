"""Re-identification data and evaluation: the folder/list parsers on tiny trees with the real naming conventions,
the synthetic pedestrians, the transforms, the P x K sampler, the retrieval protocol against hand counts and a
brute-force re-implementation, k-reciprocal re-ranking, the metric end to end, and pseudo-labels reaching a
persistent DataLoader worker."""
import numpy as np
import pytest
import torch

pytest.importorskip('mmengine')
import visionattn.heads.reid.evaluation as reid_eval  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402
from visionattn.heads.reid.data import (  # noqa: E402
    CUHK03,
    MSMT17,
    DukeMTMC,
    Market1501,
    ReIDTestDataset,
    SyntheticPedestrians,
    reid_transforms,
)
from visionattn.heads.reid.evaluation import (  # noqa: E402
    PKSampler,
    ReIDMetric,
    evaluate_rank,
    k_reciprocal_rerank,
    reid_collate,
)

pytestmark = pytest.mark.heads


def _write_images(folder, names, size=(16, 8)):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((*size, 3), 10 * i % 256, dtype=np.uint8)).save(folder / name)


# ---------------------------------------------------------------------------------------------------------------
# parsers

def test_market1501_junk_distractors_relabel_camid(tmp_path):
    _write_images(tmp_path / 'bounding_box_train', ['0002_c1s1_000451_03.jpg', '0002_c2s1_000301_01.jpg',
                                                    '0007_c6s2_000101_02.jpg', '-1_c1s1_000401_03.jpg'])
    _write_images(tmp_path / 'query', ['0001_c1s1_001051_00.jpg', '0003_c3s1_000301_00.jpg'])
    _write_images(tmp_path / 'bounding_box_test', ['-1_c1s1_000401_03.jpg', '0000_c2s1_000101_04.jpg',
                                                   '0001_c1s1_001101_01.jpg', '0001_c4s1_000901_02.jpg'])
    train = Market1501(tmp_path, 'train')
    assert len(train) == 3  # junk (-1) dropped from training
    assert train.pids.tolist() == [0, 0, 1] and train.true_pids.tolist() == [0, 0, 1]  # 2 -> 0, 7 -> 1
    assert train.camids.tolist() == [0, 1, 5] and train.num_pids == 2 and train.num_cams == 6
    item = train[2]
    assert item['img'].shape == (3, 16, 8) and item['img'].dtype == torch.uint8
    assert (item['pid'], item['camid'], item['index']) == (1, 5, 2) and item['path'].endswith('0007_c6s2_000101_02.jpg')
    gallery = Market1501(tmp_path, 'gallery')
    # raw ids kept; junk kept for the metric to exclude; distractors (0) kept as negatives; sorted by file name
    assert sorted(zip(gallery.pids.tolist(), gallery.camids.tolist())) == [(-1, 0), (0, 1), (1, 0), (1, 3)]
    assert gallery.num_pids == 2  # 0 and 1 (junk is not an identity)
    query = Market1501(tmp_path, 'query')
    assert query.pids.tolist() == [1, 3] and query.camids.tolist() == [0, 2]
    # a CamStyle-augmented training folder: generated images keep the source identity and camera
    _write_images(tmp_path / 'bounding_box_train_all_merge', ['0002_c1s1_000451_03.jpg',
                                                              '0002_c1s1_000451_03_fake_1to2.jpg'])
    merged = Market1501(tmp_path, 'train', train_dir='bounding_box_train_all_merge')
    assert merged.pids.tolist() == [0, 0] and merged.camids.tolist() == [0, 0]


def test_duke_and_cuhk03_naming(tmp_path):
    _write_images(tmp_path / 'duke' / 'bounding_box_train', ['0001_c2_f0046182.jpg', '0005_c8_f0000001.jpg',
                                                             '0005_c1_f0000002.jpg'])
    duke = DukeMTMC(tmp_path / 'duke', 'train')
    # sorted by file name: 0001_c2, 0005_c1, 0005_c8
    assert duke.pids.tolist() == [0, 1, 1] and duke.camids.tolist() == [1, 0, 7] and duke.num_cams == 8
    root = tmp_path / 'cuhk03-np'
    _write_images(root / 'labeled' / 'bounding_box_test', ['0010_c1_1.png', '0010_c2_3.png'])
    _write_images(root / 'detected' / 'bounding_box_test', ['0011_c2_1.png'])
    labeled = CUHK03(tmp_path, 'gallery', variant='labeled')  # the parent of cuhk03-np works too
    assert labeled.pids.tolist() == [10, 10] and labeled.camids.tolist() == [0, 1]
    detected = CUHK03(root, 'gallery')
    assert detected.pids.tolist() == [11] and detected.camids.tolist() == [1]
    with pytest.raises(ValueError, match='variant'):
        CUHK03(root, 'gallery', variant='both')


def test_msmt17_lists(tmp_path):
    _write_images(tmp_path / 'train' / '0000', ['0000_000_01_0303morning_0015_0.jpg',
                                                '0000_001_15_0303morning_0016_0.jpg'])
    _write_images(tmp_path / 'train' / '0004', ['0004_000_03_0303noon_0001_0.jpg'])
    _write_images(tmp_path / 'test' / '0000', ['0000_000_05_0303morning_0001_0.jpg'])
    (tmp_path / 'list_train.txt').write_text('0000/0000_000_01_0303morning_0015_0.jpg 0\n'
                                             '0000/0000_001_15_0303morning_0016_0.jpg 0\n')
    (tmp_path / 'list_val.txt').write_text('0004/0004_000_03_0303noon_0001_0.jpg 4\n')
    (tmp_path / 'list_query.txt').write_text('0000/0000_000_05_0303morning_0001_0.jpg 0\n')
    (tmp_path / 'list_gallery.txt').write_text('0000/0000_000_05_0303morning_0001_0.jpg 0\n')
    train = MSMT17(tmp_path, 'train', with_val=False)
    assert train.pids.tolist() == [0, 0] and train.camids.tolist() == [0, 14]  # camera field 01 -> 0, 15 -> 14
    assert train[1]['path'].endswith('train/0000/0000_001_15_0303morning_0016_0.jpg')
    combined = MSMT17(tmp_path, 'train')  # list_train + list_val, as CORE-ReID trains
    assert combined.pids.tolist() == [0, 0, 1] and combined.num_pids == 2
    query = MSMT17(tmp_path, 'query')
    assert query.pids.tolist() == [0] and query.camids.tolist() == [4] and query[0]['img'].shape == (3, 16, 8)
    (tmp_path / 'list_gallery.txt').write_text('0000/bad.jpg\n')
    with pytest.raises(ValueError, match='list_gallery.txt:1'):
        MSMT17(tmp_path, 'gallery')
    (tmp_path / 'list_val.txt').unlink()
    with pytest.raises(FileNotFoundError, match='list_val.txt'):
        MSMT17(tmp_path, 'train')


def test_missing_folders_and_bad_names(tmp_path):
    with pytest.raises(FileNotFoundError, match='bounding_box_train'):
        Market1501(tmp_path, 'train')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        DukeMTMC(tmp_path / 'nowhere', 'query')
    with pytest.raises(FileNotFoundError, match='detected'):
        CUHK03(tmp_path, 'train')
    with pytest.raises(FileNotFoundError, match='list_train.txt'):
        (tmp_path / 'train').mkdir()
        MSMT17(tmp_path, 'train')
    with pytest.raises(ValueError, match='split'):
        Market1501(tmp_path, 'test')
    _write_images(tmp_path / 'query', ['img_0001.jpg'])
    with pytest.raises(ValueError, match='img_0001.jpg'):
        Market1501(tmp_path, 'query')
    (tmp_path / 'query' / 'img_0001.jpg').unlink()
    with pytest.raises(FileNotFoundError, match='no images'):
        Market1501(tmp_path, 'query')


def test_pseudo_labels_validation():
    dataset = SyntheticPedestrians(num_ids=2, per_cam=2)
    with pytest.raises(ValueError, match='one label per item'):
        dataset.set_pseudo_labels(np.zeros(len(dataset) - 1, dtype=np.int64))
    with pytest.raises(ValueError, match='integers'):
        dataset.set_pseudo_labels(np.zeros(len(dataset)))
    labels = np.arange(len(dataset))[::-1].copy()
    dataset.set_pseudo_labels(labels)
    assert dataset.pids.tolist() == labels.tolist() and dataset[0]['pid'] == labels[0]
    assert dataset.true_pids.tolist() == [0] * 4 + [1] * 4
    dataset.reset_labels()
    assert dataset.pids.tolist() == dataset.true_pids.tolist()


# ---------------------------------------------------------------------------------------------------------------
# synthetic pedestrians and transforms

def test_synthetic_pedestrians_determinism_splits_and_domain_gap():
    a, b = SyntheticPedestrians(seed=3), SyntheticPedestrians(seed=3)
    assert len(a) == 8 * 2 * 4 and a.num_pids == 8 and a.num_cams == 2
    assert torch.equal(a[5]['img'], b[5]['img']) and a[5]['img'].shape == (3, 64, 32)
    assert not torch.equal(a[5]['img'], SyntheticPedestrians(seed=4)[5]['img'])
    assert not torch.equal(a[0]['img'], a[1]['img'])  # two views of one identity differ
    query = SyntheticPedestrians(domain='target', split='query')
    gallery = SyntheticPedestrians(domain='target', split='gallery')
    assert set(query.pids.tolist()) == set(gallery.pids.tolist()) == set(range(8))  # the training identities
    for pid in set(query.pids.tolist()):
        assert len(set(query.camids[query.pids == pid].tolist())) == 1  # one query camera per identity
        assert set(gallery.camids[gallery.pids == pid].tolist()) == {0, 1}  # gallery from every camera
    assert len(query) + len(gallery) == 8 * 2 * 4
    train = SyntheticPedestrians(domain='target')
    assert not torch.equal(train[0]['img'], query[0]['img'])  # fresh images of the same identity and camera
    assert (query.pids[0], query.camids[0]) == (train.true_pids[0], train.camids[0])
    new = SyntheticPedestrians(domain='target', split='query', new_test_ids=True)
    assert set(new.pids.tolist()) == set(range(8, 16))
    # the domain gap: the target's warm cast raises red over blue (cameras and identities also differ, so average
    # over a few seeds), and the identities' clothes differ
    def mean_colour(dataset):
        return np.stack([dataset[i]['img'].float().mean((1, 2)).numpy() for i in range(len(dataset))]).mean(0)
    warmth = []
    for seed in range(4):
        source = mean_colour(SyntheticPedestrians(seed=seed, per_cam=2))
        target = mean_colour(SyntheticPedestrians(seed=seed, per_cam=2, domain='target'))
        warmth.append((target[0] - target[2]) - (source[0] - source[2]))
    assert np.mean(warmth) > 25, warmth
    source_ids, target_ids = (SyntheticPedestrians(domain=d)._identities for d in ('source', 'target'))
    assert [(i['upper'].tolist(), i['lower'].tolist(), i['texture']) for i in source_ids] != \
        [(i['upper'].tolist(), i['lower'].tolist(), i['texture']) for i in target_ids]
    # cameras shift the colours of one identity
    cam0 = np.stack([a[i]['img'].float().mean((1, 2)).numpy() for i in range(4)]).mean(0)
    cam1 = np.stack([a[i]['img'].float().mean((1, 2)).numpy() for i in range(4, 8)]).mean(0)
    assert np.abs(cam0 - cam1).max() > 5
    with pytest.raises(ValueError, match='domain'):
        SyntheticPedestrians(domain='other')


def test_reid_transforms_shapes_and_seeding():
    image = np.random.default_rng(0).integers(0, 256, (100, 50, 3), dtype=np.uint8)
    train, test = reid_transforms(True), reid_transforms(False)
    assert train(image=image)['image'].shape == (256, 128, 3)
    out = test(image=image)['image']
    assert out.shape == (256, 128, 3) and out.dtype == np.uint8
    small = reid_transforms(True, img_size=(64, 32), random_erasing=1.0, gray_patch=1.0)
    dataset = SyntheticPedestrians(num_ids=2, per_cam=2, pipeline=small, seed=1)
    first = dataset[1]['img']
    assert first.shape == (3, 64, 32) and torch.equal(first, dataset[1]['img'])  # a function of (seed, epoch, index)
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[1]['img'])
    # grayscale patch replacement turns a patch of a colour image grey, and only a patch
    colour = np.zeros((64, 32, 3), dtype=np.uint8)
    colour[..., 0] = 200
    grey = reid_transforms(True, img_size=(64, 32), random_erasing=0, hflip=0, pad=0, gray_patch=1.0)
    grey.set_random_seed(0)
    out = grey(image=colour)['image']
    grey_pixels = (out[..., 0] == out[..., 1]).mean()
    assert 0 < grey_pixels < 0.5 and (out[out[..., 0] == out[..., 1]][:, 0] == round(0.299 * 200)).all()
    with pytest.raises(ValueError, match='random_erasing'):
        reid_transforms(True, random_erasing=1.5)


# ---------------------------------------------------------------------------------------------------------------
# the P x K sampler

class _Labels(torch.utils.data.Dataset):
    def __init__(self, pids):
        self.pids = np.asarray(pids)

    def __len__(self):
        return len(self.pids)


def _batches(sampler, size):
    indices = list(sampler)
    assert len(indices) == len(sampler)
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def test_pk_sampler_batches_pseudo_labels_and_determinism():
    # 10 identities, sizes 1..10 (identity 0 has a single image: drawn with replacement)
    pids = np.concatenate([np.full(k + 1, k) for k in range(10)])
    dataset = _Labels(pids)
    sampler = PKSampler(dataset, batch_size=8, num_instances=2, seed=5)
    batches = _batches(sampler, 8)
    assert len(batches) == 10 // 4  # every identity at most once per epoch
    seen = set()
    for batch in batches:
        labels = pids[batch]
        ids, counts = np.unique(labels, return_counts=True)
        assert len(ids) == 4 and (counts == 2).all()
        assert not seen & set(ids.tolist())
        seen |= set(ids.tolist())
    assert list(sampler) == list(sampler)  # deterministic per (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != list(PKSampler(dataset, batch_size=8, num_instances=2, seed=5))
    fixed = PKSampler(dataset, batch_size=8, num_instances=2, num_batches=7)
    assert all(len(set(pids[b].tolist())) == 4 for b in _batches(fixed, 8)) and len(fixed) == 56
    # pseudo-labels set after construction take effect; outliers (-1) are not drawn
    synthetic = SyntheticPedestrians(num_ids=4, per_cam=2)
    sampler = PKSampler(synthetic, batch_size=4, num_instances=2)
    clusters = np.array([0, 1] * 8)
    clusters[:2] = -1
    synthetic.set_pseudo_labels(clusters)
    for batch in _batches(sampler, 4):
        assert sorted(clusters[batch].tolist()) == [0, 0, 1, 1]
        assert min(batch) >= 2
    with pytest.raises(ValueError, match='at least P'):
        list(PKSampler(synthetic, batch_size=8, num_instances=2))
    with pytest.raises(ValueError, match='multiple of num_instances'):
        PKSampler(dataset, batch_size=6, num_instances=4)


def test_pk_sampler_cross_camera():
    # CORE-ReID's rule: an anchor, then K - 1 images from the identity's other cameras
    dataset = SyntheticPedestrians(num_ids=4, num_cams=2, per_cam=4, img_size=(16, 8))
    sampler = PKSampler(dataset, batch_size=8, num_instances=4, cross_camera=True, seed=1)
    for batch in _batches(sampler, 8):
        for start in (0, 4):
            group = np.array(batch[start:start + 4])
            assert len(set(dataset.pids[group].tolist())) == 1
            assert (dataset.camids[group[1:]] != dataset.camids[group[0]]).all()  # 4 candidates >= K: distinct
            assert len(set(group[1:].tolist())) == 3
    # one camera only: the other images of the identity; a single image: the anchor K times
    one_cam = _Labels([0, 0, 0, 1])
    one_cam.camids = np.zeros(4, dtype=np.int64)
    indices = list(PKSampler(one_cam, batch_size=4, num_instances=2, cross_camera=True))
    assert indices[indices.index(3):indices.index(3) + 2] == [3, 3]
    first = [i for i in indices if i < 3]
    assert len(first) == 2 and first[0] != first[1]


def test_pk_sampler_ranks_partition_batches(monkeypatch):
    pids = np.repeat(np.arange(12), 5)
    dataset = _Labels(pids)
    single = _batches(PKSampler(dataset, batch_size=16, num_instances=4, seed=2), 16)
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(reid_eval, 'get_dist_info', lambda rank=rank: (rank, 2))
        sampler = PKSampler(dataset, batch_size=16, num_instances=4, seed=2)
        per_rank.append(_batches(sampler, 8))
    assert len(per_rank[0]) == len(per_rank[1]) == len(single) == 3
    for whole, first, second in zip(single, *per_rank):
        assert first + second == whole  # the ranks split each batch, whole identities on each
        assert len(set(pids[first].tolist()) & set(pids[second].tolist())) == 0
        assert np.unique(pids[first], return_counts=True)[1].tolist() == [4, 4]


# ---------------------------------------------------------------------------------------------------------------
# the retrieval protocol

def test_evaluate_rank_hand_checked():
    # gallery:       g0        g1         g2      g3      g4 (distractor)  g5      g6
    g_pids = np.array([1, -1, 2, 1, 0, 1, 2])
    g_camids = np.array([0, 1, 1, 1, 1, 2, 0])
    # query 0 (pid 1, cam 0): ranking g0 g1 g2 g3 g4 g5 g6. g0 is pid 1 on the query's camera -> removed; g1 is
    #   junk -> removed; left: g2 (miss, rank 1), g3 (hit, rank 2), g4 (miss), g5 (hit, rank 4), g6 (miss).
    #   AP = (1/2 + 2/4) / 2 = 0.5; CMC = 0, 1, 1, ...
    # query 1 (pid 2, cam 1): ranking g6 first (pid 2, camera 0: a hit at rank 1); g2 is pid 2 on camera 1 ->
    #   removed. AP = 1; CMC = 1, 1, ...
    # query 2 (pid 3): no pid 3 in the gallery -> skipped.
    # mAP = (0.5 + 1) / 2 = 0.75; rank-1 = 1/2; rank-2 onwards = 1.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                        [0.5, 0.6, 0.2, 0.7, 0.8, 0.9, 0.1],
                        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    with pytest.warns(UserWarning, match='1 of 3 queries'):
        cmc, mean_ap = evaluate_rank(distmat, [1, 2, 3], g_pids, [0, 1, 0], g_camids, max_rank=10)
    assert mean_ap == pytest.approx(0.75)
    assert cmc.shape == (10,)
    np.testing.assert_allclose(cmc, [0.5] + [1.0] * 9)
    # without the same-camera rule query 0 would hit at rank 1: make sure the rule is applied, not just junk removal
    cmc_other_cam, ap_other_cam = evaluate_rank(distmat[:1], [1], g_pids, [3], g_camids, max_rank=3)
    # query on camera 3: g0 now counts (hit at rank 1), g1 junk removed -> hits at ranks 1, 3, 5 -> AP = (1 + 2/3 +
    # 3/5) / 3
    assert ap_other_cam == pytest.approx((1 + 2 / 3 + 3 / 5) / 3) and cmc_other_cam.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match='no query has a valid match'):
        evaluate_rank(distmat[2:], [3], g_pids, [0], g_camids)
    with pytest.raises(ValueError, match='gallery'):
        evaluate_rank(distmat, [1, 2, 3], g_pids[:-1], [0, 1, 0], g_camids[:-1])


def _brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Per query: walk the valid gallery entries by increasing distance, count hits by hand."""
    cmcs, aps = [], []
    for q in range(len(q_pids)):
        valid = [g for g in range(len(g_pids)) if g_pids[g] != -1
                 and not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])]
        valid.sort(key=lambda g: distmat[q, g])
        hits, precisions, first_hit = 0, [], None
        for position, g in enumerate(valid, 1):
            if g_pids[g] == q_pids[q]:
                hits += 1
                precisions.append(hits / position)
                first_hit = first_hit or position
        if hits:
            cmcs.append([1.0 if r >= first_hit else 0.0 for r in range(1, max_rank + 1)])
            aps.append(sum(precisions) / hits)
    return np.mean(cmcs, 0), np.mean(aps)


def test_evaluate_rank_matches_brute_force():
    rng = np.random.default_rng(0)
    q_pids, g_pids = rng.integers(0, 6, 15), rng.integers(-1, 6, 60)
    q_camids, g_camids = rng.integers(0, 3, 15), rng.integers(0, 3, 60)
    distmat = rng.random((15, 60))
    cmc, mean_ap = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20)
    ref_cmc, ref_ap = _brute_force(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    np.testing.assert_allclose(cmc, ref_cmc)
    assert mean_ap == pytest.approx(ref_ap)


def _clusters(num_ids=6, per_id=8, dim=16, noise=0.9, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = np.repeat(np.arange(num_ids), per_id)
    features = centres[pids] + noise * rng.normal(size=(len(pids), dim))
    camids = np.tile(np.arange(per_id) % 2, num_ids)
    return features / np.linalg.norm(features, axis=1, keepdims=True), pids, camids


def _sq_dist(a, b):
    return ((a[:, None] - b[None]) ** 2).sum(-1)


def test_k_reciprocal_rerank():
    features, pids, camids = _clusters()
    query = np.arange(len(pids)) % 8 == 0
    qf, gf = features[query], features[~query]
    q_g, q_q, g_g = _sq_dist(qf, gf), _sq_dist(qf, qf), _sq_dist(gf, gf)
    args = (pids[query], pids[~query], camids[query], camids[~query])
    _, base_ap = evaluate_rank(q_g, *args)
    reranked = k_reciprocal_rerank(q_g, q_q, g_g, k1=6, k2=3)
    assert reranked.shape == q_g.shape and reranked.dtype == np.float32
    _, rerank_ap = evaluate_rank(reranked, *args)
    assert rerank_ap >= base_ap - 1e-9 and base_ap < 0.99, (base_ap, rerank_ap)
    # lambda = 1 keeps only the original distance (squared, row-normalised): the same ranking
    original_only = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.0)
    np.testing.assert_array_equal(np.argsort(original_only, 1, kind='stable'), np.argsort(q_g, 1, kind='stable'))
    # identical query and gallery copies of a sample stay at distance ~0 (their k-reciprocal sets coincide)
    same = k_reciprocal_rerank(_sq_dist(gf[:4], gf), _sq_dist(gf[:4], gf[:4]), g_g, k1=6, k2=3)
    assert (same.argmin(1) == np.arange(4)).all()
    with pytest.raises(ValueError, match='shapes'):
        k_reciprocal_rerank(q_g, q_q[:-1], g_g)


def _rerank_loops(q_g, q_q, g_g, k1, k2, lam):
    """k-reciprocal re-ranking written as the paper's steps, one probe and one pair at a time."""
    n_q = len(q_q)
    full = np.zeros((n_q + len(g_g),) * 2)
    full[:n_q, :n_q], full[:n_q, n_q:], full[n_q:, :n_q], full[n_q:, n_q:] = q_q, q_g, q_g.T, g_g
    full = full ** 2
    full = full / full.max(axis=1, keepdims=True)
    n = len(full)
    near = [list(np.argsort(full[i], kind='stable')) for i in range(n)]

    def r_set(i, k):  # R(i, k): the k-nearest neighbours of i (itself included) that have i among theirs
        return [j for j in near[i][:k + 1] if i in near[j][:k + 1]]

    encoding = np.zeros((n, n))
    for i in range(n):
        r = r_set(i, k1)
        star = set(r)
        for j in r:
            rj = r_set(j, int(np.around(k1 / 2)))
            if len(set(rj) & set(r)) > 2 / 3 * len(rj):
                star |= set(rj)
        star = sorted(star)
        total = sum(np.exp(-full[i, j]) for j in star)
        for j in star:
            encoding[i, j] = np.exp(-full[i, j]) / total
    if k2 > 1:
        encoding = np.stack([np.mean([encoding[j] for j in near[i][:k2]], axis=0) for i in range(n)])
    out = np.zeros((n_q, len(g_g)))
    for i in range(n_q):
        for g in range(len(g_g)):
            both = np.minimum(encoding[i], encoding[n_q + g]).sum()
            either = np.maximum(encoding[i], encoding[n_q + g]).sum()
            out[i, g] = (1 - lam) * (1 - both / either) + lam * full[i, n_q + g]
    return out


def test_k_reciprocal_rerank_matches_loops():
    features, _, _ = _clusters(num_ids=4, per_id=6, noise=0.7, seed=3)
    qf, gf = features[:5], features[5:]
    q_g, q_q, g_g = _sq_dist(qf, gf), _sq_dist(qf, qf), _sq_dist(gf, gf)
    for k1, k2, lam in ((6, 3, 0.3), (4, 1, 0.5)):
        np.testing.assert_allclose(k_reciprocal_rerank(q_g, q_q, g_g, k1, k2, lam),
                                   _rerank_loops(q_g, q_q, g_g, k1, k2, lam), atol=1e-5)


def _run_metric(metric, dataset, features):
    for start in range(0, len(dataset), 5):
        batch = reid_collate([dataset[i] for i in range(start, min(start + 5, len(dataset)))])
        samples = batch['data_samples']
        for sample in samples:
            sample.pred_feature = torch.as_tensor(features[sample.metainfo['index']], dtype=torch.float32)
        metric.process(batch, [s.to_dict() for s in samples])  # as mmengine's Evaluator passes them
    return metric.evaluate(len(dataset))


def test_reid_metric_end_to_end():
    test_set = ReIDTestDataset(query=dict(type=SyntheticPedestrians, split='query', per_cam=2),
                               gallery=dict(type=SyntheticPedestrians, split='gallery', per_cam=2))
    assert len(test_set) == 32 and test_set[0]['is_query'] and not test_set[8]['is_query']
    by_name = ReIDTestDataset(query=dict(type='SyntheticPedestrians', split='query', per_cam=2),
                              gallery=SyntheticPedestrians(split='gallery', per_cam=2))
    assert torch.equal(by_name[20]['img'], test_set[20]['img']) and by_name.pids.tolist() == test_set.pids.tolist()
    with pytest.raises(TypeError, match='dataset class'):
        ReIDTestDataset(query=dict(type='NoSuchSet'), gallery=dict(type='NoSuchSet'))
    batch = reid_collate([test_set[0], test_set[9]])
    assert batch['inputs'].shape == (2, 3, 64, 32) and batch['inputs'].dtype == torch.uint8
    assert batch['data_samples'][1].metainfo['is_query'] is False and batch['data_samples'][0].gt_label.item() == 0
    pids = test_set.pids
    # features = a direction per identity (perfect retrieval), then noise that ruins it
    perfect = np.eye(16)[pids] * 3 + 0.01 * np.random.default_rng(0).normal(size=(len(pids), 16))
    result = _run_metric(ReIDMetric(), test_set, perfect)
    assert set(result) == {'mAP', 'rank-1', 'rank-5', 'rank-10'}
    assert result['mAP'] == pytest.approx(100.0) and result['rank-1'] == pytest.approx(100.0)
    noisy = np.random.default_rng(1).normal(size=(len(pids), 16))
    euclidean = _run_metric(ReIDMetric(), test_set, noisy)
    cosine = _run_metric(ReIDMetric(metric='cosine'), test_set, noisy)
    assert euclidean['mAP'] < 80 and euclidean == pytest.approx(cosine)  # same ranking on unit features
    # the metric agrees with evaluate_rank on the same features
    unit = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    query = np.arange(len(pids)) < test_set.num_query
    cmc, mean_ap = evaluate_rank(_sq_dist(unit[query], unit[~query]), pids[query], pids[~query],
                                 test_set.camids[query], test_set.camids[~query])
    assert euclidean['mAP'] == pytest.approx(100 * mean_ap) and euclidean['rank-5'] == pytest.approx(100 * cmc[4])
    reranked = _run_metric(ReIDMetric(rerank=True, k1=4, k2=2), test_set, perfect)
    assert reranked['mAP'] == pytest.approx(100.0)
    metric = ReIDMetric()
    with pytest.raises(KeyError, match='is_query'):
        metric.process({}, [BaseDataElement(pred_feature=torch.zeros(4), gt_label=torch.tensor(1),
                                            metainfo={'camid': 0})])


def test_pseudo_labels_reach_persistent_worker():
    dataset = SyntheticPedestrians(num_ids=2, per_cam=2, img_size=(16, 8))
    loader = torch.utils.data.DataLoader(dataset, batch_size=len(dataset), num_workers=1, persistent_workers=True,
                                         collate_fn=reid_collate)
    first = next(iter(loader))
    assert [s.gt_label.item() for s in first['data_samples']] == dataset.true_pids.tolist()
    labels = np.arange(len(dataset)) + 100
    dataset.set_pseudo_labels(labels)
    second = next(iter(loader))  # the same worker process, started before the labels changed
    assert [s.gt_label.item() for s in second['data_samples']] == labels.tolist()


# ---------------------------------------------------------------------------------------------------------------
# adversarial inputs

def test_bad_image_files_name_the_file_and_folders_are_named(tmp_path):
    import io

    from PIL import Image
    query = tmp_path / 'query'
    _write_images(query, ['0001_c1s1_000001_00.jpg', '0002_c2s1_000001_00.webp'])
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 16, 3), dtype=np.uint8)).save(buffer, 'JPEG')
    (query / '0003_c1s1_000001_00.jpg').write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    (query / '0004_c1s1_000001_00.jpg').mkdir()  # a folder with an image suffix is not an image
    dataset = Market1501(tmp_path, 'query')
    # .webp was silently skipped (a partial split); the folder was listed and failed to open
    assert [p.rsplit('/', 1)[-1][:4] for p in dataset.paths] == ['0001', '0002', '0003']
    assert dataset[1]['img'].shape == (3, 16, 8)
    with pytest.raises(OSError, match='0003_c1s1_000001_00.jpg'):  # was "image file is truncated", no file named
        dataset[2]
    (tmp_path / 'bounding_box_test').mkdir()
    with pytest.raises(FileNotFoundError, match='bounding_box_test'):
        Market1501(tmp_path, 'gallery')


def test_pipeline_output_and_transform_arguments_are_checked():
    from visionattn.heads.reid.data import GrayscalePatchReplacement, ReIDRandomErasing
    # a pipeline that normalises (float output) would be normalised a second time by the data preprocessor
    dataset = SyntheticPedestrians(num_ids=2, per_cam=1, pipeline=lambda image: {'image': image / 255.0})
    with pytest.raises(ValueError, match=r'SyntheticPedestrians\[0\].*uint8'):
        dataset[0]
    with pytest.raises(ValueError, match='height, width'):  # was "object of type 'int' has no len()"
        reid_transforms(True, 256)
    with pytest.raises(ValueError, match='fill'):  # 2 values failed at the first erasing, 4 were cut to 3
        ReIDRandomErasing(fill=(1, 2))
    with pytest.raises(ValueError, match='fill'):
        ReIDRandomErasing(fill=(1, 2, 3, 4))
    with pytest.raises(ValueError, match='area_range'):  # never fits: random erasing was silently off
        ReIDRandomErasing(area_range=(1.5, 2.0))
    with pytest.raises(ValueError, match='min_aspect'):  # was a ZeroDivisionError at the first image
        GrayscalePatchReplacement(min_aspect=0)


def test_msmt17_list_identities_are_checked(tmp_path):
    _write_images(tmp_path / 'train' / '0000', ['0000_000_01_0303morning_0015_0.jpg',
                                                '0000_001_02_0303morning_0016_0.jpg'])
    (tmp_path / 'list_train.txt').write_text('0000/0000_000_01_0303morning_0015_0.jpg zero\n')
    with pytest.raises(ValueError, match='list_train.txt:1'):  # was int()'s message, no file or line
        MSMT17(tmp_path, 'train', with_val=False)
    # a junk id in the training list was relabelled into identity 0, merged with the real identity 0
    (tmp_path / 'list_train.txt').write_text('0000/0000_000_01_0303morning_0015_0.jpg -1\n'
                                             '0000/0000_001_02_0303morning_0016_0.jpg 0\n')
    with pytest.raises(ValueError, match='list_train.txt:1'):
        MSMT17(tmp_path, 'train', with_val=False)


def test_evaluate_rank_ties_nan_empty_and_skipped_queries():
    g_pids, g_camids = np.array([0, 1, 1, 2, 2]), np.array([0, 1, 0, 1, 0])
    # collapsed features (every distance equal): the score depended on the gallery's file order (0.375 vs 0.667)
    flat = np.zeros((2, 5))
    cmc, mean_ap = evaluate_rank(flat, [1, 2], g_pids, [0, 1], g_camids, max_rank=3)
    cmc_rev, mean_ap_rev = evaluate_rank(flat, [1, 2], g_pids[::-1], [0, 1], g_camids[::-1], max_rank=3)
    assert mean_ap == mean_ap_rev == pytest.approx(0.25)  # the match ranks last among the 4 valid entries
    np.testing.assert_array_equal(cmc, cmc_rev)
    with pytest.raises(ValueError, match='NaN'):  # NaN features gave a score (the same as the tie case)
        evaluate_rank(np.full((2, 5), np.nan), [1, 2], g_pids, [0, 1], g_camids)
    with pytest.raises(ValueError, match='0 gallery entries'):
        evaluate_rank(np.zeros((2, 0)), [1, 2], [], [0, 1], [])
    with pytest.warns(UserWarning, match='1 of 2 queries'):  # silently averaged over the other query only
        evaluate_rank(np.arange(10.0).reshape(2, 5), [1, 7], g_pids, [0, 0], g_camids)


def test_rerank_refuses_non_finite_negative_and_float_k():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(2, 4)), rng.normal(size=(5, 4))
    q_g, q_q, g_g = _sq_dist(q, g), _sq_dist(q, q), _sq_dist(g, g)
    with pytest.raises(ValueError, match='non-finite'):
        k_reciprocal_rerank(np.full_like(q_g, np.nan), q_q, g_g)
    with pytest.raises(ValueError, match='negative'):  # similarities: squared, so their order was flipped
        k_reciprocal_rerank(-q_g, -q_q, -g_g)
    with pytest.raises(TypeError, match='integers'):
        k_reciprocal_rerank(q_g, q_q, g_g, k1=2.5)
    assert k_reciprocal_rerank(q_g, q_q, g_g, k1=3, k2=2).shape == (2, 5)


def test_pk_sampler_refuses_single_identity_batches_and_reports_too_few_ids_in_len():
    # P = 1: every batch one identity, the triplet losses have no negative and are silently 0
    with pytest.raises(ValueError, match='P >= 2'):
        PKSampler(_Labels([0, 0, 1, 1]), batch_size=4, num_instances=4)
    too_few = PKSampler(_Labels([0, 0, 1, 1]), batch_size=6, num_instances=2)
    with pytest.raises(ValueError, match='at least P'):  # len() was 0 (an empty epoch) while iter() raised
        len(too_few)
    wrong_cams = _Labels([0, 0, 1, 1])
    wrong_cams.camids = np.array([0])
    with pytest.raises(ValueError, match='camids'):
        list(PKSampler(wrong_cams, batch_size=4, num_instances=2, cross_camera=True))
    with pytest.raises(ValueError, match='seed'):  # failed at the first epoch as "expected non-negative integer"
        PKSampler(_Labels([0, 0, 1, 1]), batch_size=4, num_instances=2, seed=-1)


def test_pk_sampler_names_a_loader_batch_size_that_cuts_its_p_x_k_batches(monkeypatch):
    # DataLoader(batch_size=6) over PKSampler(batch_size=8, K=4) silently gave [3, 3, 3, 3, 7, 7], [7, 7, 1, 1, 1, 1]:
    # identities split over batches, the triplet losses short of positives
    from mmengine.runner import Runner
    dataset = _Labels(np.repeat(np.arange(4), 4))
    loader = Runner.build_dataloader(dict(batch_size=6, num_workers=0, dataset=dataset,
                                          sampler=dict(type=PKSampler, batch_size=8, num_instances=4)))
    with pytest.raises(ValueError, match=r"batch_size is 6 but its PKSampler draws batches of batch_size=8 "
                                         r"\(P=2 identities x K=4 instances\).* set the loader's batch_size to 8"):
        loader.sampler.check_batch_size(loader.batch_size)
    PKSampler(dataset, batch_size=8, num_instances=4).check_batch_size(8)
    monkeypatch.setattr(reid_eval, 'get_dist_info', lambda: (1, 2))
    sampler = PKSampler(dataset, batch_size=16, num_instances=4)
    sampler.check_batch_size(8)  # each of 2 processes loads its half of the global batch
    with pytest.raises(ValueError, match=r'batch_size is 16 .*batch_size=16 .* / 2 processes = 8 per process'):
        sampler.check_batch_size(16)


def test_the_runner_refuses_a_loader_that_cuts_across_pk_batches():
    # check_batches (run by VisionRunner.build_train_loop) asks the sampler: before, the mismatch trained silently
    from types import SimpleNamespace

    from mmengine.runner import Runner

    from visionattn.engine.config_checks import ConfigError, check_batches
    dataset = _Labels(np.repeat(np.arange(4), 4))

    def loop(batch_size):
        return SimpleNamespace(dataloader=Runner.build_dataloader(dict(
            batch_size=batch_size, num_workers=0, dataset=dataset,
            sampler=dict(type=PKSampler, batch_size=8, num_instances=4))))
    with pytest.raises(ConfigError, match=r"train_dataloader: the DataLoader's batch_size is 6 .* set the loader's "
                                          r"batch_size to 8"):
        check_batches(loop(6), 'train_dataloader')
    check_batches(loop(8), 'train_dataloader')


def test_reid_metric_refuses_bad_ranks_rerank_args_labels_and_is_query():
    # Adversarial probes (round 7): rank 1.5 was reported as rank-1; k1=0 failed only after the whole test set was
    # extracted; is_query='False' counted as a query (bool of a string) and a [2] gt_label as its first id, silently;
    # no sample, or mixed feature widths, failed in torch.stack.
    for ranks in ((1.5,), 5, '15', (0, 1)):
        with pytest.raises(ValueError, match='ranks must be a non-empty sequence of positive whole numbers'):
            ReIDMetric(ranks=ranks)
    for kwargs in (dict(k1=0), dict(k2=2.5), dict(lambda_value=1.5)):
        with pytest.raises(ValueError, match='k1 and k2 must be whole numbers|lambda_value must lie'):
            ReIDMetric(rerank=True, **kwargs)
    metric = ReIDMetric()

    def sample(label=torch.tensor(1), is_query=True, width=4):
        return BaseDataElement(pred_feature=torch.ones(width), gt_label=label, metainfo=dict(camid=0,
                                                                                             is_query=is_query))
    with pytest.raises(ValueError, match="is_query must be a bool, got 'False'"):
        metric.process({}, [sample(is_query='False')])
    with pytest.raises(ValueError, match='gt_label must hold one identity'):
        metric.process({}, [sample(label=torch.tensor([1, 2]))])
    metric.process({}, [sample(is_query=np.bool_(True)), sample(is_query=torch.tensor(False))])
    assert [r[3] for r in metric.results] == [True, False]
    with pytest.raises(ValueError, match='got no samples'):
        metric.compute_metrics([])
    with pytest.raises(ValueError, match=r'widths differ between samples \(\[4, 5\]\)'):
        metric.compute_metrics([(torch.ones(4), 0, 0, True), (torch.ones(5), 0, 1, False)])
    with pytest.raises(ValueError, match='max_rank must be a positive whole number'):
        evaluate_rank(np.array([[0.1, 0.2]]), [0], [0, 1], [0], [1, 1], max_rank=2.5)
