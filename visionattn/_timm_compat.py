"""The one place that imports timm's private helpers, so a timm refactor breaks a single file."""
import operator
from typing import List, Optional, Sequence, Tuple, Union

from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet, feature_take_indices
from timm.models._hub import generate_readme

__all__ = ['resolve_pretrained_cfg', 'resolve_take_indices', 'FeatureGetterNet', 'generate_readme']


def resolve_take_indices(num_levels: int, indices: Optional[Union[int, Sequence[int]]]) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices`` (None: every level, an int n: the last n, a sequence: those, negative from
    the end), raising ValueError that names the argument instead of timm's AssertionError."""
    given = indices
    if indices is not None:
        # Levels are ints (NumPy ints too); a float (out_indices=(1.0, 2.0) from a config) reached a slice inside
        # the model and failed there with "slice indices must be integers", naming neither argument.
        try:
            indices = [_level(i) for i in indices] if hasattr(indices, '__len__') else _level(indices)
        except TypeError:
            raise ValueError(f'indices={given!r}: levels are ints (0..{num_levels - 1}, negative from the end), '
                             f'or one int n for the last n levels') from None
        if indices == []:
            raise ValueError(f'indices={given!r}: give at least one level (0..{num_levels - 1})')
    try:
        take, max_index = feature_take_indices(num_levels, indices)
    except (AssertionError, ValueError, TypeError) as error:
        raise ValueError(f'indices={given!r}: {error}') from None
    # Levels come out in network order, and feature_info lists them in the order given: unsorted or repeated indices
    # would pair outputs with the wrong feature_info entries (issue 21).
    if any(b <= a for a, b in zip(take, take[1:])):
        raise ValueError(f'indices={given!r}: levels must be given in increasing order without repeats '
                         f'(resolved to {list(take)})')
    return take, max_index


def _level(index) -> int:
    if isinstance(index, bool):  # an int to Python, never a level anyone means
        raise TypeError(index)
    return operator.index(index)
