"""RelaCtrl: relevance-guided control of a frozen PixArt (arXiv 2502.14377; 360CVGroup/RelaCtrl
diffusion/model/nets/pixart_relactrl_v1.py, ControlPixArtMSHalf_RelaCtrl).

Eleven light control blocks sit after base blocks [0, 2, 3, 4, 5, 6, 7, 8, 9, 18, 19] of a 28-block PixArt (the
positions the ControlNet Relevance Score ranks highest), each a Two-Dimensional Shuffle Mixer (TDSM) between two
zero-initialised projections instead of a copied transformer block. The control image is patch-embedded by the
base's own ``x_embedder`` (+ positional embedding). The base is frozen; with the projections at zero the output
equals the base's.

TDSM: adaLN modulation (a 6 x D table + the base's t_block output, only the attention's shift/scale/gate are used),
a random channel permutation cutting the D channels into G groups (G per block [6, 2, 6, 4, 2, 2, 4, 4, 6, 6, 6],
group widths multiples of 32), and in each group a random permutation of the flattened (tokens x channels) tensor
cut into 4 segments, each attended by a small 4-head attention, then un-permuted. The official code re-draws every
permutation in each forward, at inference too; here training draws from torch's global generator (seeded by the
runner) and evaluation from a generator seeded with ``inference_seed`` at every forward, so sampling is
reproducible (``inference_seed=None`` keeps the official unseeded behaviour).
"""
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Union

import torch
import torch.nn as nn

from .dit import PixArt, SelfAttention, modulate

__all__ = ['RELACTRL_CONTROL_INDICES', 'RELACTRL_GROUP_COUNTS', 'distribute_group_widths', 'ShuffledTokenAttention',
           'TDSM', 'RelaCtrlBlock', 'RelaCtrlPixArt', 'load_denoiser_checkpoint']

RELACTRL_CONTROL_INDICES = (0, 2, 3, 4, 5, 6, 7, 8, 9, 18, 19)
RELACTRL_GROUP_COUNTS = (6, 2, 6, 4, 2, 2, 4, 4, 6, 6, 6)
TDSM_HEADS = 4
TDSM_SEGMENTS = 4


def distribute_group_widths(dim: int, groups: int, multiple: int = 8 * TDSM_HEADS) -> List[int]:
    """Widths of the TDSM channel groups: an even split of ``dim``, each rounded up to ``multiple``, then corrected
    one ``multiple`` at a time from the first group on until they sum to ``dim`` (the official rule, multiple = 8 x
    4 heads = 32). Raises if no such split exists."""
    if groups < 1 or dim < 1:
        raise ValueError(f'need a positive dim and group count, got dim={dim}, groups={groups}')
    widths = [dim // groups + (1 if i < dim % groups else 0) for i in range(groups)]
    widths = [w + (-w % multiple) for w in widths]
    excess, index, tries = sum(widths) - dim, 0, 0
    while excess and tries < 4 * groups * max(1, abs(excess) // multiple):
        step = -multiple if excess > 0 else multiple
        if widths[index] + step > 0:
            widths[index] += step
            excess += step
        index, tries = (index + 1) % groups, tries + 1
    if excess or any(w % multiple for w in widths):
        raise ValueError(f'cannot split {dim} channels into {groups} groups of multiples of {multiple}')
    return widths


class ShuffledTokenAttention(nn.Module):
    """One TDSM group: the flattened [B, L * d] tensor is permuted, cut into 4 segments of L/4 "tokens" of d
    channels, each attended (4 heads, shared weights ``attn``), and permuted back."""

    def __init__(self, dim: int, num_heads: int = TDSM_HEADS, segments: int = TDSM_SEGMENTS):
        super().__init__()
        self.segments = segments
        self.attn = SelfAttention(dim, num_heads, qkv_bias=True)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        if tokens % self.segments:
            raise ValueError(f'TDSM cuts the tokens into {self.segments} segments: {tokens} tokens do not divide')
        order = torch.randperm(tokens * dim, generator=generator).to(x.device)
        shuffled = x.reshape(batch, tokens * dim)[:, order]  # sizes spelled out: -1 is ambiguous for batch 0
        segments = shuffled.reshape(batch * self.segments, tokens // self.segments, dim)  # contiguous cuts
        mixed = self.attn(segments).reshape(batch, tokens * dim)
        out = torch.empty_like(mixed)
        out[:, order] = mixed  # the inverse permutation
        return out.reshape(batch, tokens, dim)


class TDSM(nn.Module):
    """Two-Dimensional Shuffle Mixer: adaLN-modulated channel-grouped, token-channel-shuffled attention.

    Args:
        dim: Channels (the base's hidden size).
        groups: Channel groups G.
        group_multiple: Group widths are multiples of this (32 officially; smaller for tiny test models).
    """

    def __init__(self, dim: int, groups: int, group_multiple: int = 8 * TDSM_HEADS):
        super().__init__()
        self.group_widths = distribute_group_widths(dim, groups, group_multiple)
        self.experts_attn = nn.ModuleList([ShuffledTokenAttention(w) for w in self.group_widths])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim ** 0.5)

    def forward(self, c: torch.Tensor, t0: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        batch, _, dim = c.shape
        # the table has the 6 rows of a PixArt block; TDSM only uses the attention's three (the MLP's are unused)
        shift, scale, gate = (self.scale_shift_table[None] + t0.reshape(batch, 6, dim)).chunk(6, dim=1)[:3]
        h = modulate(self.norm(c), shift, scale)
        channels = torch.randperm(dim, generator=generator).to(c.device)
        out = torch.empty_like(h)
        start = 0
        for width, expert in zip(self.group_widths, self.experts_attn):
            index = channels[start:start + width]
            out[:, :, index] = expert(h[:, :, index], generator).to(out.dtype)  # autocast may change it
            start += width
        return c + gate * out


class RelaCtrlBlock(nn.Module):
    """A control block: zero-initialised ``before_proj`` and ``after_proj`` (D -> D) around a TDSM (``process``).

    The first block takes the embedded control image c: ``process(x + before_proj(c))``; later ones take the
    previous control state: ``process(c + before_proj(x))``. Returns (c, c_skip = after_proj(c)).
    """

    def __init__(self, dim: int, block_index: int, groups: int, group_multiple: int = 8 * TDSM_HEADS):
        super().__init__()
        self.block_index = block_index
        self.process = TDSM(dim, groups, group_multiple)
        self.before_proj = nn.Linear(dim, dim)
        self.after_proj = nn.Linear(dim, dim)
        for layer in (self.before_proj, self.after_proj):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, t0: torch.Tensor,
                generator: Optional[torch.Generator] = None):
        if self.block_index == 0:
            c = self.process(x + self.before_proj(c), t0, generator)
        else:
            c = self.process(c + self.before_proj(x), t0, generator)
        return c, self.after_proj(c)


def load_denoiser_checkpoint(module: nn.Module, path: Union[str, Path],
                             loader: Optional[Callable[[str], Dict]] = None, prefix: str = 'denoiser.') -> None:
    """Load a denoiser's weights from a checkpoint of ours (``{'state_dict': {'denoiser.*': ...}}``, as the engine
    saves a DiffusionModel) or a bare state dict (official layouts: ``state_dict``/``model`` unwrapped).

    Args:
        module: The denoiser.
        path: A checkpoint file, or a work dir (its ``last_checkpoint`` record names the file).
        loader: Reads the file without running pickled code (default :func:`visionattn.hub.load_checkpoint_file`;
            the engine passes its training-checkpoint loader).
        prefix: Key prefix of the denoiser inside a task model's state dict.

    Raises:
        FileNotFoundError: No such file (or work dir without a checkpoint).
        RuntimeError: Missing or unexpected keys, named.
    """
    path = Path(path)
    if path.is_dir():
        record = path / 'last_checkpoint'
        if not record.is_file():
            raise FileNotFoundError(f'work dir {str(path)!r} has no last_checkpoint record: train the base first')
        path = path / record.read_text().strip()  # relative to the work dir (an absolute record stays absolute)
    if not path.is_file():
        raise FileNotFoundError(f'base checkpoint {str(path)!r} does not exist: train the base model first '
                                '(see configs/diffusion/) or set base_checkpoint=None')
    if loader is None:
        from visionattn.hub import load_checkpoint_file as loader
    state = loader(str(path))
    for key in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [f'{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}' for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise RuntimeError(f'checkpoint {path} does not fit the model: missing keys {missing}, unexpected keys '
                           f'{unexpected}, shape mismatches (checkpoint vs model) {mismatched}')
    module.load_state_dict(state)


class RelaCtrlPixArt(nn.Module):
    """A frozen PixArt base with RelaCtrl control blocks; a denoiser (``forward(x, t, y=None, control=None, ...)``).

    Args:
        base: The PixArt (module or config dict ``type=`` a factory, built here).
        control_indices: Base blocks after which a control block acts (the official 11 of a 28-block PixArt).
        group_counts: TDSM channel groups of each control block.
        group_multiple: Group widths are multiples of this (32 officially).
        inference_seed: Seed of the permutations in eval mode (reset at every forward); None: the global RNG.
        base_checkpoint: Our checkpoint of the trained base, loaded by :meth:`load_base` (the task model's
            ``init_weights``); building does not read it.
    """

    def __init__(self, base: Union[nn.Module, Dict], control_indices: Sequence[int] = RELACTRL_CONTROL_INDICES,
                 group_counts: Sequence[int] = RELACTRL_GROUP_COUNTS, group_multiple: int = 8 * TDSM_HEADS,
                 inference_seed: Optional[int] = 0, base_checkpoint: Optional[str] = None):
        super().__init__()
        if isinstance(base, dict):
            base = dict(base)
            base = base.pop('type')(**base)
        if not isinstance(base, PixArt):
            raise TypeError(f'RelaCtrl controls a PixArt base, got {type(base).__name__}')
        if len(control_indices) != len(group_counts):
            raise ValueError(f'{len(control_indices)} control positions but {len(group_counts)} group counts')
        if list(control_indices) != sorted(set(control_indices)) or control_indices[0] != 0:
            raise ValueError(f'control_indices must be increasing and start at 0 (the first block takes the '
                             f'control image), got {list(control_indices)}')
        if control_indices[-1] >= base.depth - 1:
            raise ValueError(f'control index {control_indices[-1]} needs a base block after it; the base has '
                             f'{base.depth} blocks')
        self.base_model = base
        for param in self.base_model.parameters():
            param.requires_grad_(False)
        self.control_indices = tuple(int(i) for i in control_indices)
        self.controlnet = nn.ModuleList([RelaCtrlBlock(base.hidden_size, i, g, group_multiple)
                                         for i, g in enumerate(group_counts)])
        self.inference_seed = inference_seed
        self.base_checkpoint = base_checkpoint
        self.skip_blocks: Set[int] = set()  # control blocks switched off (ControlNet Relevance Score)
        for name in ('in_channels', 'out_channels', 'input_size', 'num_classes'):
            setattr(self, name, getattr(base, name))

    def load_base(self, loader: Optional[Callable[[str], Dict]] = None) -> None:
        """Load ``base_checkpoint`` (if set) into the frozen base; see :func:`load_denoiser_checkpoint`."""
        if self.base_checkpoint:
            load_denoiser_checkpoint(self.base_model, self.base_checkpoint, loader)

    def train(self, mode: bool = True):
        super().train(mode)
        self.base_model.eval()  # frozen; also keeps the base's label dropout off, as the official base_model.eval()
        return self

    def _generator(self) -> Optional[torch.Generator]:
        if self.training or self.inference_seed is None:
            return None
        return torch.Generator().manual_seed(int(self.inference_seed))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                control: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        base = self.base_model
        if control is None:
            return base(x, t, y, **cond)
        if control.shape != x.shape:
            raise ValueError(f'the control image must have the shape of x {tuple(x.shape)} (it goes through the '
                             f'base\'s patch embedding), got {tuple(control.shape)}')
        if not control.is_floating_point():  # a 0/255 uint8 edge map was embedded as 0..255, not the model's range
            raise ValueError(f'the control image must be float, in the diffusion space of x, got {control.dtype} '
                             '(ControlledDiffusionModel.conditions scales uint8 edge maps to [-1, 1])')
        inputs = base.embed_inputs(x, t, y, **cond)
        c, _ = base._embed(control.to(x.dtype))
        tokens, t0, grid = inputs['tokens'], inputs['t0'], inputs['grid']
        generator = self._generator()
        tokens = base.blocks[0](tokens, inputs['cond'], t0, inputs['cond_mask'], grid)
        c_skip = torch.zeros_like(tokens)
        for index in range(1, len(base.blocks)):
            if index - 1 in self.control_indices:
                position = self.control_indices.index(index - 1)
                c, c_skip = self.controlnet[position](tokens, c, t0, generator)
                if position in self.skip_blocks:
                    c_skip = torch.zeros_like(c_skip)
            # Official quirk (pixart_relactrl_v1.py forward): at positions without a control block the last c_skip
            # is added again, so block 19's output also feeds base blocks 21..27.
            tokens = base.blocks[index](tokens + c_skip, inputs['cond'], t0, inputs['cond_mask'], grid)
        return base.unpatchify(base.final_layer(tokens, inputs['t']), grid)
