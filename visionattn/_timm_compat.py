"""The one place that imports timm's private helpers, so a timm refactor breaks a single file."""
from typing import List, Optional, Sequence, Tuple, Union

from timm.models._builder import resolve_pretrained_cfg
from timm.models._features import feature_take_indices

__all__ = ['resolve_pretrained_cfg', 'resolve_take_indices']


def resolve_take_indices(num_levels: int, indices: Optional[Union[int, Sequence[int]]]) -> Tuple[List[int], int]:
    """timm's ``feature_take_indices`` (None: every level, an int n: the last n, a sequence: those, negative from
    the end), raising ValueError that names the argument instead of timm's AssertionError."""
    try:
        return feature_take_indices(num_levels, None if indices is None else (
            indices if isinstance(indices, int) else list(indices)))
    except AssertionError as error:
        raise ValueError(f'indices={indices!r}: {error}') from None
