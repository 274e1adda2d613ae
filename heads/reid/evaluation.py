"""Person re-identification with the engine: the batch collate, the P x K identity sampler, the standard retrieval
evaluation (CMC and mAP, Market-1501 protocol), k-reciprocal re-ranking, and the metric that runs them.

The evaluation protocol (Zheng et al., ICCV 2015, as open-reid and torchreid implement it): the gallery is ranked by
distance to each query; gallery images of the query's identity taken by the query's camera are removed (they are
not cross-camera matches), and so are junk images (pid -1); a query left with no correct match is skipped (with a
warning that counts them). CMC rank-k is the fraction of queries with a correct match in the first k; AP averages the
precision at each correct match's rank; mAP averages AP over the queries. Gallery entries at exactly the same distance
rank the correct matches last, so ties never help a query and the score does not depend on the gallery's order (a
model whose features collapsed to one point scores the worst case, not whatever the file order gives).
"""
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.structures import BaseDataElement
from torch.utils.data import Sampler

from visionattn.engine.registry import DATA_SAMPLERS, DATASETS, FUNCTIONS, METRICS

from .data import CUHK03, MSMT17, DukeMTMC, Market1501, ReIDTestDataset, SyntheticPedestrians

__all__ = ['reid_collate', 'PKSampler', 'evaluate_rank', 'k_reciprocal_rerank', 'ReIDMetric',
           'pairwise_distance']

for _dataset in (Market1501, DukeMTMC, CUHK03, MSMT17, SyntheticPedestrians, ReIDTestDataset):
    DATASETS.register_module(module=_dataset, force=True)


@FUNCTIONS.register_module()
def reid_collate(batch: Sequence[Dict]) -> Dict:
    """Stack a batch of ReID items; one data sample per item with ``gt_label`` = pid and its camera, index and path
    (and ``is_query`` from :class:`~visionattn.heads.reid.data.ReIDTestDataset`) in the metainfo."""
    if not batch:
        raise ValueError('reid_collate got an empty batch')
    shapes = {tuple(item['img'].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f'reid_collate needs images of one size (resize them in the pipeline), got {sorted(shapes)}')
    samples = []
    for item in batch:
        meta = {'camid': int(item['camid']), 'index': int(item['index']), 'path': item.get('path', '')}
        if 'is_query' in item:
            meta['is_query'] = bool(item['is_query'])
        samples.append(BaseDataElement(gt_label=torch.tensor(int(item['pid'])), metainfo=meta))
    return {'inputs': torch.stack([item['img'] for item in batch]), 'data_samples': samples}


@DATA_SAMPLERS.register_module()
class PKSampler(Sampler):
    """P identities x K instances per batch (the "RandomIdentitySampler" of open-reid and CORE-ReID), for triplet
    losses that need positives and negatives in every batch.

    Each epoch walks through a random permutation of the identities, ``batch_size / num_instances`` per batch, and
    draws ``num_instances`` of each identity's images (without replacement when it has enough, with replacement
    otherwise); a batch never repeats an identity. By default an epoch is ``num_identities // P`` batches (every
    identity once; the remainder waits for the next epoch's permutation); ``num_batches`` fixes it instead (as
    CORE-ReID's 400 iterations per epoch), walking through fresh permutations as needed.

    ``cross_camera=True`` picks the instances as CORE-ReID's (MMT's) RandomMultipleGallerySampler: a random anchor,
    then K - 1 images of the identity taken by other cameras (without replacement when at least K exist, else with),
    or, if the identity was seen by one camera only, K - 1 of its other images (same rule). An identity with a single
    image gives the anchor K times (the official sampler emits it alone, which shifts every later batch).

    The labels are read from ``dataset.pids`` at each ``__iter__``, so pseudo-labels set between epochs take effect;
    negative labels (clustering outliers) are never drawn. Draws depend only on (seed, epoch). With several processes
    ``batch_size`` is the global batch: rank r yields the r-th of ``world_size`` equal slices of each batch (whole
    identities when the slice is a multiple of K), so the DataLoader's batch size must be ``batch_size /
    world_size``.

    Args:
        dataset: A dataset with a ``pids`` array (one label per item).
        batch_size: Global batch size, a multiple of ``num_instances`` holding at least 2 identities (P >= 2).
        num_instances: K, images per identity in a batch.
        shuffle: Random identity order and instance choice (else identities in label order, first K images).
        seed: Seed of the draws (None, as mmengine's runner passes without a configured seed: one drawn and shared
            by the processes, as mmengine's DefaultSampler does).
        num_batches: Batches per epoch (default: every identity once).
        cross_camera: Prefer instances from other cameras than a random anchor (needs ``dataset.camids``).
    """

    def __init__(self, dataset, batch_size: int = 64, num_instances: int = 4, shuffle: bool = True,
                 seed: Optional[int] = 0, num_batches: Optional[int] = None, cross_camera: bool = False):
        for name, value in (('batch_size', batch_size), ('num_instances', num_instances)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f'PKSampler: {name} must be an integer, got {value!r}')
        if num_instances < 1 or batch_size < 1 or batch_size % num_instances:
            raise ValueError(f'batch_size ({batch_size}) must be a positive multiple of num_instances '
                             f'({num_instances})')
        if batch_size // num_instances < 2:
            raise ValueError(f'PKSampler: batch_size / num_instances = {batch_size // num_instances} identity per '
                             f'batch; the triplet losses need at least 2 (P >= 2) or they see no negative and are '
                             f'silently 0: raise batch_size or lower num_instances')
        rank, world_size = get_dist_info()
        if batch_size % world_size:
            raise ValueError(f'batch_size {batch_size} does not split evenly over {world_size} processes')
        if num_batches is not None and num_batches < 1:
            raise ValueError(f'num_batches must be positive, got {num_batches}')
        if not hasattr(dataset, 'pids'):
            raise TypeError(f'PKSampler needs a dataset with a pids array, got {type(dataset).__name__}')
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_ids_per_batch = batch_size // num_instances
        self.shuffle = shuffle
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f'PKSampler: seed must be a non-negative integer or None, got {seed!r}')
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.num_batches = num_batches
        self.cross_camera = cross_camera
        if cross_camera and not hasattr(dataset, 'camids'):
            raise TypeError(f'PKSampler(cross_camera=True) needs a dataset with a camids array, got '
                            f'{type(dataset).__name__}')
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def check_batch_size(self, loader_batch_size: int) -> None:
        """The DataLoader cuts this sampler's index stream into its own batches, which the sampler cannot see: with
        another size than this process's share of ``batch_size`` an identity's K images straddle two batches (or two
        P x K batches merge), so the triplet losses lose positives silently. Whoever builds the loader around the
        sampler (mmengine passes the sampler no batch size) calls this with the loader's batch size.

        Raises:
            ValueError: Naming both batch sizes (and the process count when it divides them).
        """
        share = self.batch_size // self.world_size
        if loader_batch_size != share:
            per_process = f' / {self.world_size} processes = {share} per process' if self.world_size > 1 else ''
            raise ValueError(f'the DataLoader\'s batch_size is {loader_batch_size} but its PKSampler draws batches of '
                             f'batch_size={self.batch_size} (P={self.num_ids_per_batch} identities x '
                             f'K={self.num_instances} instances{per_process}): the loader would cut across its P x K '
                             f'batches; set the loader\'s batch_size to {share}')

    def _groups(self) -> Tuple[np.ndarray, List[np.ndarray]]:
        pids = np.asarray(self.dataset.pids)
        if pids.ndim != 1 or len(pids) != len(self.dataset):
            raise ValueError(f'dataset.pids must hold one label per item ({len(self.dataset)}), got shape {pids.shape}')
        labels = np.unique(pids[pids >= 0])
        if len(labels) < self.num_ids_per_batch:
            raise ValueError(f'PKSampler needs at least P = batch_size / num_instances = {self.num_ids_per_batch} '
                             f'identities, the dataset has {len(labels)} (lower batch_size or raise num_instances)')
        order = np.argsort(pids, kind='stable')
        sorted_pids = pids[order]
        starts = np.searchsorted(sorted_pids, labels, side='left')
        ends = np.searchsorted(sorted_pids, labels, side='right')
        return labels, [order[s:e] for s, e in zip(starts, ends)]

    def _epoch_batches(self, num_labels: int) -> int:
        return self.num_batches if self.num_batches is not None else num_labels // self.num_ids_per_batch

    def _cross_camera_instances(self, rng, pool: np.ndarray, camids: np.ndarray) -> np.ndarray:
        anchor = pool[rng.integers(len(pool))]
        others = pool[camids[pool] != camids[anchor]]
        if len(others) == 0:
            others = pool[pool != anchor]
        if len(others) == 0:
            return np.full(self.num_instances, anchor)
        # the official rule compares with K, not K - 1: exactly K - 1 candidates are still drawn with replacement
        rest = rng.choice(others, self.num_instances - 1, replace=len(others) < self.num_instances)
        return np.concatenate([[anchor], rest])

    def _batches(self) -> List[np.ndarray]:
        labels, members = self._groups()
        camids = np.asarray(self.dataset.camids) if self.cross_camera else None
        if camids is not None and camids.shape != (len(self.dataset),):
            raise ValueError(f'dataset.camids must hold one camera per item ({len(self.dataset)}), got shape '
                             f'{camids.shape}')
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        batches, queue = [], np.zeros(0, dtype=np.int64)
        for _ in range(self._epoch_batches(len(labels))):
            if len(queue) < self.num_ids_per_batch:  # a fresh permutation; the remainder is dropped (no repeats)
                queue = rng.permutation(len(labels)) if self.shuffle else np.arange(len(labels))
            chosen, queue = queue[:self.num_ids_per_batch], queue[self.num_ids_per_batch:]
            batch = []
            for label_index in chosen:
                pool = members[label_index]
                if not self.shuffle:
                    batch.append(np.resize(pool, self.num_instances))  # first K, cycled when fewer
                elif self.cross_camera:
                    batch.append(self._cross_camera_instances(rng, pool, camids))
                else:
                    batch.append(rng.choice(pool, self.num_instances, replace=len(pool) < self.num_instances))
            batches.append(np.concatenate(batch))
        return batches

    def __iter__(self) -> Iterator[int]:
        share = self.batch_size // self.world_size
        for batch in self._batches():
            yield from batch[self.rank * share:(self.rank + 1) * share].tolist()

    def __len__(self) -> int:
        labels, _ = self._groups()  # the same check as __iter__: too few identities fails here, not as an empty epoch
        return self._epoch_batches(len(labels)) * (self.batch_size // self.world_size)


def pairwise_distance(query: torch.Tensor, gallery: torch.Tensor, metric: str = 'euclidean') -> torch.Tensor:
    """Distances between rows: 'euclidean' is the squared Euclidean distance (as open-reid's evaluator computes it),
    'cosine' is 1 - cosine similarity."""
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f'features must be [N, D] with the same D, got {tuple(query.shape)} and '
                         f'{tuple(gallery.shape)}')
    query, gallery = query.double(), gallery.double()
    if metric == 'euclidean':
        dist = query.pow(2).sum(1, keepdim=True) + gallery.pow(2).sum(1)[None] - 2 * query @ gallery.T
        return dist.clamp_(min=0)
    if metric == 'cosine':
        return 1 - torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(gallery, dim=1).T
    raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> Tuple[np.ndarray, float]:
    """CMC and mAP under the Market-1501 protocol (see the module docstring).

    Args:
        distmat: [num_query, num_gallery] distances (smaller = more similar; NaN is refused); among equal distances
            the correct matches rank last.
        q_pids: Query identities.
        g_pids: Gallery identities (-1 = junk, excluded; 0 = distractor, a negative like any other identity).
        q_camids: Query cameras.
        g_camids: Gallery cameras.
        max_rank: Length of the CMC curve; queries with fewer valid gallery entries repeat their last value.

    Returns:
        (cmc, mAP): cmc[k - 1] is the rank-k matching rate and mAP the mean average precision, both in [0, 1], over
        the queries that have at least one valid match.
    """
    distmat = np.asarray(distmat.cpu() if isinstance(distmat, torch.Tensor) else distmat, dtype=np.float64)
    q_pids, g_pids, q_camids, g_camids = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a).reshape(-1)
                                          for a in (q_pids, g_pids, q_camids, g_camids))
    if distmat.ndim != 2:
        raise ValueError(f'distmat must be [num_query, num_gallery], got shape {distmat.shape}')
    num_query, num_gallery = distmat.shape
    if len(q_pids) != num_query or len(q_camids) != num_query:
        raise ValueError(f'distmat has {num_query} queries but q_pids/q_camids have {len(q_pids)}/{len(q_camids)}')
    if len(g_pids) != num_gallery or len(g_camids) != num_gallery:
        raise ValueError(f'distmat has {num_gallery} gallery entries but g_pids/g_camids have '
                         f'{len(g_pids)}/{len(g_camids)}')
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f'max_rank must be a positive whole number, got {max_rank!r}')
    if num_query == 0 or num_gallery == 0:
        raise ValueError(f'evaluate_rank needs queries and a gallery, got {num_query} queries and {num_gallery} '
                         'gallery entries')
    if np.isnan(distmat).any():
        rows = np.flatnonzero(np.isnan(distmat).any(axis=1))
        raise ValueError(f'distmat holds NaN in {len(rows)} query row(s) (first: query {int(rows[0])}): non-finite '
                         'features? NaN would rank arbitrarily and give a meaningless score')
    all_cmc, all_ap = [], []
    for q in range(num_query):
        # by distance, then correct matches after the others: a tie never counts in the query's favour
        ranked = np.lexsort(((g_pids == q_pids[q]), distmat[q]))
        ranked_pids, ranked_cams = g_pids[ranked], g_camids[ranked]
        keep = ~(((ranked_pids == q_pids[q]) & (ranked_cams == q_camids[q])) | (ranked_pids == -1))
        hits = (ranked_pids[keep] == q_pids[q]).astype(np.float64)
        if not hits.any():
            continue  # no cross-camera match for this query: not counted
        cmc = np.minimum(np.cumsum(hits), 1.0)
        if len(cmc) < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        hit_ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the correct matches
        all_ap.append(float(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks)))
    if not all_ap:
        raise ValueError('evaluate_rank: no query has a valid match in the gallery (same-camera matches and junk '
                         'are excluded)')
    if len(all_ap) < num_query:
        warnings.warn(f'evaluate_rank: {num_query - len(all_ap)} of {num_query} queries have no cross-camera match in '
                      f'the gallery and are left out of CMC and mAP', stacklevel=2)
    return np.mean(all_cmc, axis=0), float(np.mean(all_ap))


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6,
                        lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding",
    CVPR 2017): the final distance is ``(1 - lambda) * Jaccard(k-reciprocal sets) + lambda * original``.

    As the authors' released function (which open-reid-based code, CORE-ReID's included, calls), the given
    distances are squared and each row is divided by its maximum before the encoding; each probe's k-reciprocal
    set is expanded by the 1/2 k1-reciprocal sets of its members that share more than 2/3 of their members with it,
    weighted by exp(-distance), then averaged over the k2 nearest neighbours (local query expansion).

    Args:
        q_g_dist: [Q, G] query-gallery distances.
        q_q_dist: [Q, Q] query-query distances.
        g_g_dist: [G, G] gallery-gallery distances.
        k1: Size of the k-reciprocal neighbourhoods.
        k2: Neighbours of the local query expansion (1 disables it).
        lambda_value: Weight of the original distance.

    Returns:
        [Q, G] re-ranked distances (float32).
    """
    q_g, q_q, g_g = (np.asarray(d.cpu() if isinstance(d, torch.Tensor) else d, dtype=np.float32)
                     for d in (q_g_dist, q_q_dist, g_g_dist))
    if q_g.ndim != 2:
        raise ValueError(f'q_g_dist must be [num_query, num_gallery], got shape {q_g.shape}')
    num_query, num_gallery = q_g.shape
    if q_q.shape != (num_query, num_query) or g_g.shape != (num_gallery, num_gallery):
        raise ValueError(f'distance shapes disagree: q_g {q_g.shape}, q_q {q_q.shape}, g_g {g_g.shape}')
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in (k1, k2)):
        raise TypeError(f'k1 and k2 must be integers, got {k1!r} and {k2!r}')
    if k1 < 1 or k2 < 1 or not 0 <= lambda_value <= 1:
        raise ValueError(f'need k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1, got {k1}, {k2}, {lambda_value}')
    for name, d in (('q_g_dist', q_g), ('q_q_dist', q_q), ('g_g_dist', g_g)):
        if d.size and not np.isfinite(d).all():
            raise ValueError(f'{name} holds non-finite values (non-finite features?)')
        # the distances are squared below: a negative one (a similarity passed by mistake) would flip its order
        if d.size and d.min() < -1e-5 * max(1.0, float(np.abs(d).max())):
            raise ValueError(f'{name} holds negative values (min {float(d.min()):.4g}): re-ranking needs distances '
                             '(smaller = more similar), not similarities')
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]) ** 2
    dist = dist / np.maximum(dist.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    total = len(dist)
    ranking = np.argsort(dist, axis=1, kind='stable')
    half_k1 = int(np.around(k1 / 2))

    def reciprocal(probe: int, k: int) -> np.ndarray:
        forward = ranking[probe, :k + 1]
        mutual = (ranking[forward, :k + 1] == probe).any(axis=1)
        return forward[mutual]

    weights = np.zeros_like(dist)
    for probe in range(total):
        base = reciprocal(probe, k1)
        expanded = [base]
        for candidate in base:
            candidate_set = reciprocal(candidate, half_k1)
            if len(np.intersect1d(candidate_set, base)) > 2 / 3 * len(candidate_set):
                expanded.append(candidate_set)
        members = np.unique(np.concatenate(expanded))
        w = np.exp(-dist[probe, members])
        weights[probe, members] = w / w.sum()
    if k2 > 1:
        weights = weights[ranking[:, :k2]].mean(axis=1)
    # Jaccard distance of the encodings: 1 - sum(min) / sum(max), with sum(max) = 2 - sum(min) for unit-sum rows
    jaccard = np.empty((num_query, total), dtype=np.float32)
    for probe in range(num_query):
        support = np.flatnonzero(weights[probe])
        overlap = np.minimum(weights[probe, support][None], weights[:, support]).sum(axis=1)
        jaccard[probe] = 1 - overlap / (2 - overlap)
    final = (1 - lambda_value) * jaccard + lambda_value * dist[:num_query]
    return final[:, num_query:].astype(np.float32)


@METRICS.register_module()
class ReIDMetric(BaseMetric):
    """mAP and CMC rank-1/5/10 (%) of a query + gallery test set (:class:`~visionattn.heads.reid.data.ReIDTestDataset`).

    Each data sample must carry ``pred_feature`` (a 1-D float tensor, the task model's predict output),
    ``gt_label`` (pid), and ``camid`` and ``is_query`` in its metainfo. Features are L2-normalised, then compared by
    squared Euclidean ('euclidean', as open-reid) or cosine distance (the same ranking); ``rerank`` applies
    k-reciprocal re-ranking.

    Args:
        metric: 'euclidean' or 'cosine'.
        rerank: Apply k-reciprocal re-ranking.
        normalize: L2-normalise the features first.
        ranks: CMC ranks to report.
        k1: Re-ranking's k1.
        k2: Re-ranking's k2.
        lambda_value: Re-ranking's lambda.
    """
    default_prefix = ''

    def __init__(self, metric: str = 'euclidean', rerank: bool = False, normalize: bool = True,
                 ranks: Sequence[int] = (1, 5, 10), k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                 collect_device: str = 'cpu', prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if metric not in ('euclidean', 'cosine'):
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence) or not ranks or any(
                isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ranks):
            # rank 1.5 was reported as rank-1, ranks=5 failed as "'int' object is not iterable"
            raise ValueError(f'ranks must be a non-empty sequence of positive whole numbers, got {ranks!r}')
        if rerank:  # checked here, not after the whole test set was extracted
            if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in (k1, k2)):
                raise ValueError(f'ReIDMetric: k1 and k2 must be whole numbers >= 1, got {k1!r} and {k2!r}')
            if not 0 <= lambda_value <= 1:
                raise ValueError(f'ReIDMetric: lambda_value must lie in [0, 1], got {lambda_value!r}')
        self.metric = metric
        self.rerank = rerank
        self.normalize = normalize
        self.ranks = tuple(int(r) for r in ranks)
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value

    @staticmethod
    def _field(sample, key):
        if isinstance(sample, BaseDataElement):
            return sample.get(key)
        value = sample.get(key)
        if value is None and isinstance(sample.get('metainfo'), dict):
            value = sample['metainfo'].get(key)
        return value

    def process(self, data_batch, data_samples: Sequence) -> None:
        for sample in data_samples:
            values = {key: self._field(sample, key) for key in ('pred_feature', 'gt_label', 'camid', 'is_query')}
            missing = [key for key, value in values.items() if value is None]
            if missing:
                raise KeyError(f'ReIDMetric: data sample lacks {missing} (pred_feature from the model in predict mode; '
                               'gt_label/camid from reid_collate; is_query from a ReIDTestDataset)')
            feature = torch.as_tensor(values['pred_feature']).detach().float().cpu()
            if feature.ndim != 1:
                raise ValueError(f'pred_feature must be a 1-D tensor, got shape {tuple(feature.shape)}')
            label = torch.as_tensor(values['gt_label'])
            if label.numel() != 1:  # the first of several labels was taken silently
                raise ValueError(f'ReIDMetric: gt_label must hold one identity, got shape {tuple(label.shape)}')
            is_query = values['is_query']
            if torch.is_tensor(is_query) and is_query.numel() == 1:
                is_query = is_query.item()
            if not isinstance(is_query, (bool, np.bool_)) and is_query not in (0, 1):  # bool('False') is True
                raise ValueError(f'ReIDMetric: is_query must be a bool, got {is_query!r}')
            self.results.append((feature, int(label.reshape(-1)[0]), int(values['camid']), bool(is_query)))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        if not results:
            raise ValueError('ReIDMetric got no samples: the test set is empty or the model predicted nothing')
        widths = sorted({len(r[0]) for r in results})
        if len(widths) != 1:
            raise ValueError(f'ReIDMetric: pred_feature widths differ between samples ({widths}): one model, one '
                             'feature width')
        features = torch.stack([r[0] for r in results])
        pids = np.array([r[1] for r in results], dtype=np.int64)
        camids = np.array([r[2] for r in results], dtype=np.int64)
        is_query = np.array([r[3] for r in results], dtype=bool)
        if not is_query.any() or is_query.all():
            raise ValueError(f'ReIDMetric needs queries and gallery entries, got {int(is_query.sum())} queries of '
                             f'{len(is_query)} samples')
        if self.normalize:
            features = torch.nn.functional.normalize(features, dim=1)
        query, gallery = features[torch.from_numpy(is_query)], features[torch.from_numpy(~is_query)]
        distmat = pairwise_distance(query, gallery, self.metric).numpy()
        if self.rerank:
            distmat = k_reciprocal_rerank(distmat, pairwise_distance(query, query, self.metric).numpy(),
                                          pairwise_distance(gallery, gallery, self.metric).numpy(),
                                          self.k1, self.k2, self.lambda_value)
        cmc, mean_ap = evaluate_rank(distmat, pids[is_query], pids[~is_query], camids[is_query], camids[~is_query],
                                     max_rank=max(self.ranks))
        metrics = {'mAP': 100.0 * mean_ap}
        metrics.update({f'rank-{k}': 100.0 * float(cmc[k - 1]) for k in self.ranks})
        print_log(f'ReID ({int(is_query.sum())} queries, {int((~is_query).sum())} gallery): '
                  + ', '.join(f'{k} {v:.2f}' for k, v in metrics.items()), logger='current')
        return metrics
