"""MoBA and VMoBA attention modules: thin layers over :func:`visionattn.ops.moba_attention` and
:func:`visionattn.ops.vmoba_attention`, taking q, k, v (the projections belong to the model, as in VMoBA, which
replaces only the attention call of a video DiT).

MoBA: Lu et al., arXiv:2502.13189 (github.com/MoonshotAI/MoBA, MIT). VMoBA: Wu et al., arXiv:2506.23858
(github.com/KwaiVGI/VMoBA). Selection here is per query block, not per query token (see ``visionattn/ops/moba.py``).
"""
import math
import numbers
from typing import Optional, Sequence

import torch
from torch import nn

from visionattn.ops.moba import SCOPES, SELECT_MODES, Chunk, moba_attention, vmoba_attention

__all__ = ['MoBAAttention', 'VMoBAAttention']


def _positive_int(n) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1


class MoBAAttention(nn.Module):
    """Causal mixture of block attention over a 1-D sequence (MoBA), parameter-free.

    Args:
        block_size: Tokens per block (MoBA's ``moba_chunk_size``).
        topk: Blocks per query block, counting its own (MoBA's ``moba_topk``).
        scale: Logit multiplier (default ``head_dim ** -0.5``).
        backend: None (auto), 'reference' or 'triton'.
    """

    def __init__(self, block_size: int = 128, topk: int = 3, scale: Optional[float] = None,
                 backend: Optional[str] = None):
        super().__init__()
        if not (_positive_int(block_size) and _positive_int(topk)):
            raise ValueError(f'block_size and topk must be positive ints, got {block_size!r} and {topk!r}')
        self.block_size, self.topk, self.scale, self.backend = int(block_size), int(topk), scale, backend

    def extra_repr(self) -> str:
        return f'block_size={self.block_size}, topk={self.topk}'

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k [B, H, N, D], v [B, H, N, Dv] -> [B, H, N, Dv]."""
        return moba_attention(q, k, v, self.block_size, self.topk, scale=self.scale, backend=self.backend)


class VMoBAAttention(nn.Module):
    """VMoBA's attention for one layer of a video model, parameter-free.

    The layer-wise recurrent partition: layer ``layer_index`` uses ``partitions[layer_index % len(partitions)]``,
    by default the 1-D, 2-D and 3-D chunks in turn (the paper's 1D -> 2D -> 3D cycle).

    Args:
        layer_index: Index of the layer in the model (picks the partition).
        chunk_1d: Frames per 1-D block.
        chunk_2d: (ch, cw) spatial tile through all frames.
        chunk_3d: (ct, ch, cw) cube.
        select_mode: 'threshold' (VMoBA's default) or 'topk'.
        topk: Blocks per query block for 'topk'.
        threshold: Cumulative similarity share for 'threshold' (VMoBA's default 0.25).
        scope: 'query_head', 'head_global' (VMoBA's global selection), 'block' or 'overall'.
        scale: Logit multiplier (default ``head_dim ** -0.5``).
        backend: None (auto), 'reference' or 'triton'.
    """

    def __init__(self, layer_index: int = 0, chunk_1d: Chunk = 1, chunk_2d: Sequence[int] = (4, 4),
                 chunk_3d: Sequence[int] = (2, 4, 4), select_mode: str = 'threshold', topk: Optional[int] = None,
                 threshold: float = 0.25, scope: str = 'head_global', scale: Optional[float] = None,
                 backend: Optional[str] = None):
        super().__init__()
        if isinstance(layer_index, bool) or not isinstance(layer_index, numbers.Integral) or layer_index < 0:
            # a float failed in the tuple indexing below with Python's own TypeError
            raise ValueError(f'layer_index must be an int >= 0 (the layer\'s index in the model), got {layer_index!r}')
        layer_index = int(layer_index)
        # refused here, not at the first forward (a 3-entry chunk_2d would silently run a 3-D partition)
        if len(tuple(chunk_2d)) != 2 or len(tuple(chunk_3d)) != 3:
            raise ValueError(f'chunk_2d must be (ch, cw) and chunk_3d (ct, ch, cw), got {chunk_2d} and {chunk_3d}')
        for name, chunk in (('chunk_2d', chunk_2d), ('chunk_3d', chunk_3d)):
            if not all(_positive_int(c) for c in chunk):
                raise ValueError(f'{name} must hold positive ints, got {chunk!r}')
        if isinstance(chunk_1d, bool) or not isinstance(chunk_1d, numbers.Real) or not 0 < chunk_1d < math.inf:
            raise ValueError(f'chunk_1d must be a positive finite number of frames, got {chunk_1d!r}')
        if select_mode not in SELECT_MODES:
            raise ValueError(f'select_mode={select_mode!r}; expected one of {SELECT_MODES}')
        if scope not in SCOPES:
            raise ValueError(f'scope={scope!r}; expected one of {SCOPES}')
        partitions = (chunk_1d, tuple(chunk_2d), tuple(chunk_3d))
        self.layer_index = layer_index
        self.chunk = partitions[layer_index % len(partitions)]
        self.select_mode, self.topk, self.threshold, self.scope = select_mode, topk, threshold, scope
        self.scale, self.backend = scale, backend
        if select_mode == 'topk' and topk is None:
            raise ValueError("select_mode='topk' needs topk")
        if select_mode == 'topk' and not _positive_int(topk):
            raise ValueError(f"select_mode='topk' needs topk, a positive int; got {topk!r}")
        if select_mode == 'threshold' and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f'threshold={threshold} must lie in [0, 1]')

    def extra_repr(self) -> str:
        rule = f'topk={self.topk}' if self.select_mode == 'topk' else f'threshold={self.threshold}'
        return f'layer_index={self.layer_index}, chunk={self.chunk}, {rule}, scope={self.scope}'

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, thw: Optional[Sequence[int]] = None,
                grid_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        """q, k [B, H, T*H*W, D], v [B, H, T*H*W, Dv] in row-major (t, h, w) token order -> [B, H, N, Dv].

        The token grid is ``thw`` (T, H, W), or ``grid_size`` as a DiT/PixArt block passes it to its attention core
        ((T, H, W) of a video, (H, W) of an image: one frame).
        """
        grid = thw if thw is not None else grid_size
        if grid is None:
            raise ValueError('VMoBAAttention needs the token grid: thw=(T, H, W) or grid_size')
        grid = tuple(grid)
        if len(grid) == 2:
            grid = (1, *grid)
        return vmoba_attention(q, k, v, grid, self.chunk, self.select_mode, self.topk, self.threshold,
                               self.scope, scale=self.scale, backend=self.backend)
