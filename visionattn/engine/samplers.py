"""Training samplers of the official recipes that mmengine lacks, registered for the dataloader configs."""
import math
import numbers
from typing import Optional

from mmengine.dist import get_dist_info, sync_random_seed
from timm.data.distributed_sampler import RepeatAugSampler as _TimmRepeatAugSampler

from .registry import DATA_SAMPLERS

__all__ = ['RepeatAugSampler']


def _check_positive(name: str, value, whole: bool, zero: bool = False) -> None:
    """timm's sampler checks none of its counts: ``num_repeats=0`` gives an empty epoch, a negative one or a negative
    ``selected_ratio`` fails as "__len__() should return >= 0", a negative ``selected_round`` is taken as 0."""
    kind = numbers.Integral if whole else numbers.Real
    if not isinstance(value, kind) or isinstance(value, bool) or not (value >= 0 if zero else value > 0) \
            or not math.isfinite(value):
        what = 'a whole number' if whole else 'a number'
        raise ValueError(f'RepeatAugSampler {name} must be {what} {">= 0" if zero else "> 0"}, got {value!r}')


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(_TimmRepeatAugSampler):
    """Repeated augmentation (Hoffer et al. 2020; DeiT's ``RASampler``): timm's ``RepeatAugSampler`` with the
    process count and rank taken from mmengine, so it also runs without torch.distributed (one process).

    Each epoch shuffles the dataset, repeats every index ``num_repeats`` times, deals the list out over the processes
    (the copies of an image land on different processes, each with its own augmentation) and keeps the first
    ``len(dataset) // selected_round * selected_round / world_size`` indices per process, so an epoch takes as many
    steps as without repetition. With one process the copies fall into the same batch, as DeiT's sampler does.

    Args:
        dataset: The dataset (the runner passes it).
        shuffle: Shuffle before repeating.
        num_repeats: Copies of each image (3 in DeiT).
        selected_round: Round the per-epoch count down to a multiple of this (256 in DeiT); 0 for no rounding.
        selected_ratio: Divide the per-epoch count by this instead of the process count (0: the process count).
        seed: Added to the epoch to seed the shuffle; timm's and DeiT's samplers seed it with the epoch alone, which
            seed 0 reproduces. None: a seed drawn on rank 0 and shared (the runner passes the config's seed).
    """

    def __init__(self, dataset, shuffle: bool = True, num_repeats: int = 3, selected_round: int = 256,
                 selected_ratio: float = 0, seed: Optional[int] = None):
        _check_positive('num_repeats', num_repeats, whole=False)
        _check_positive('selected_round', selected_round, whole=True, zero=True)
        _check_positive('selected_ratio', selected_ratio, whole=False, zero=True)
        rank, world_size = get_dist_info()
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, num_repeats=num_repeats,
                         selected_round=selected_round, selected_ratio=selected_ratio)
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        # timm's __iter__ seeds its generator with self.epoch: hand it seed + epoch.
        super().set_epoch(self.seed + int(epoch))
