"""DiT and PixArt-alpha latent diffusion transformers, for images [B, C, H, W] and videos [B, C, T, H, W].

DiT (Peebles & Xie, arXiv 2212.09748; facebookresearch/DiT models.py): class-conditional, adaLN-zero blocks, each
block regressing its own 6 modulation vectors from the timestep + label embedding. PixArt-alpha (arXiv 2310.00426;
PixArt-alpha/PixArt-alpha diffusion/model/nets/PixArt.py, PixArt_blocks.py): adaLN-single (one global ``t_block``
maps the timestep embedding to 6 vectors, each block adds its learned ``scale_shift_table``), cross-attention to
caption tokens projected by ``y_embedder.y_proj``, a ``T2IFinalLayer``. Parameter names follow the official code so
their checkpoints load without renaming.

The denoisers follow the interface of ``visionattn.heads.diffusion.task``: attributes ``in_channels``,
``out_channels``, ``input_size``, ``num_classes``; ``forward(x, t, y=None, **cond)``. The video variants cut 3-D
patches (pt, p, p) into spatio-temporal tokens (Latte/OpenSora-style). The self-attention core of every block is
pluggable: pass ``attention_core=factory``, ``factory(block_index)`` returning a module ``core(q, k, v, grid_size)``
with q, k, v [B, heads, N, head_dim] and ``grid_size`` the token grid ((h, w) or (t, h, w)); the default is
:class:`SDPAttentionCore` (``F.scaled_dot_product_attention``).
"""
import math
import warnings
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

__all__ = ['SDPAttentionCore', 'SelfAttention', 'MultiHeadCrossAttention', 'TimestepEmbedder', 'SizeEmbedder',
           'LabelEmbedder', 'CaptionEmbedder', 'PatchEmbed', 'DiTBlock', 'PixArtBlock', 'FinalLayer',
           'T2IFinalLayer', 'DiT', 'PixArt', 'sincos_pos_embed', 'dit_xl_2', 'dit_l_2', 'dit_b_2', 'dit_s_2',
           'dit_tiny', 'dit_video_tiny', 'pixart_xl_2', 'pixart_ms_xl_2', 'pixart_tiny', 'pixart_video_tiny']

AttentionFactory = Callable[[int], nn.Module]


def _gelu_tanh() -> nn.Module:
    return nn.GELU(approximate='tanh')  # both official codebases use the tanh approximation in every MLP


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation ``x * (1 + scale) + shift``; shift/scale broadcast over the tokens ([B, 1, D] or [B, D])."""
    if shift.ndim == 2:
        shift, scale = shift.unsqueeze(1), scale.unsqueeze(1)
    return x * (1 + scale) + shift


# ---------------------------------------------------------------------------------------------------------------
# Positional embedding
# ---------------------------------------------------------------------------------------------------------------
def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    if dim % 2:
        raise ValueError(f'sin-cos embedding needs an even dimension, got {dim}')
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.einsum('m,d->md', positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed(dim: int, grid_size: Sequence[int], base_size: Optional[Sequence[int]] = None,
                     lewei_scale: float = 1.0) -> torch.Tensor:
    """Fixed sin-cos embedding [N, dim] of a (h, w) or (t, h, w) token grid, row-major.

    2-D: MAE/DiT's layout (the first half of the channels encodes the column, the second the row); PixArt's
    ``lewei_scale``/``base_size`` rescale the coordinates to ``arange(n) / (n / base) / lewei_scale`` (DiT: base = n,
    scale 1). 3-D: the spatial embedding plus a 1-D temporal one over the frames, summed (Latte's separate temporal
    embedding, here added to every spatial token).
    """
    grid_size = tuple(int(g) for g in grid_size)
    if base_size is None:
        base_size = grid_size
    if len(grid_size) == 3:
        spatial = sincos_pos_embed(dim, grid_size[1:], base_size[-2:], lewei_scale)
        temporal = torch.from_numpy(_sincos_1d(dim, np.arange(grid_size[0], dtype=np.float64))).float()
        return (temporal[:, None, :] + spatial[None]).reshape(-1, dim)
    if len(grid_size) != 2:
        raise ValueError(f'grid_size must be (h, w) or (t, h, w), got {grid_size}')
    if dim % 4:
        raise ValueError(f'2-D sin-cos embedding needs a dimension divisible by 4, got {dim}')
    height, width = grid_size
    rows = np.arange(height, dtype=np.float32) / (height / base_size[0]) / lewei_scale
    cols = np.arange(width, dtype=np.float32) / (width / base_size[1]) / lewei_scale
    col_grid, row_grid = np.meshgrid(cols, rows)  # the official code puts w first: half 1 = columns
    emb = np.concatenate([_sincos_1d(dim // 2, col_grid), _sincos_1d(dim // 2, row_grid)], axis=1)
    return torch.from_numpy(emb).float()


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------
class SDPAttentionCore(nn.Module):
    """Dense attention ``softmax(q k^T / sqrt(d)) v`` over all tokens; ``grid_size`` is unused."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                grid_size: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class SelfAttention(nn.Module):
    """Multi-head self-attention with timm's parameter layout (``qkv``, ``proj``) and a pluggable core.

    Args:
        dim: Channels.
        num_heads: Heads; must divide ``dim``.
        qkv_bias: Bias on the qkv projection (True in DiT and PixArt).
        core: Module mapping (q, k, v, grid_size) -> out, [B, heads, N, head_dim]; None for SDPA.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, core: Optional[nn.Module] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.core = SDPAttentionCore() if core is None else core

    def forward(self, x: torch.Tensor, grid_size: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = self.core(qkv[0], qkv[1], qkv[2], grid_size=grid_size)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class MultiHeadCrossAttention(nn.Module):
    """PixArt's cross-attention from image tokens to condition tokens (``q_linear``, ``kv_linear``, ``proj``).

    The official code packs the batch's captions into one sequence under xformers' block-diagonal mask; here each
    sample attends to its own tokens with a key-padding mask, which is the same computation.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q_linear(x).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        kv = self.kv_linear(cond).reshape(batch, cond.shape[1], 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        mask = None if cond_mask is None else cond_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


# ---------------------------------------------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features (GLIDE's ``[cos, sin]`` order, 256 frequencies) through a 2-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        weight = self.mlp[0].weight
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(weight.dtype))


class SizeEmbedder(TimestepEmbedder):
    """PixArt-MS micro-condition embedder: each scalar of [B, k] (image size h, w or aspect ratio) is embedded like a
    timestep and the k embeddings are concatenated to [B, k * hidden]."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        batch, count = values.shape
        return super().forward(values.reshape(-1)).reshape(batch, count * self.mlp[2].out_features)


class LabelEmbedder(nn.Module):
    """Class-label table with one extra "null" row (index ``num_classes``) when labels are dropped for
    classifier-free guidance (DiT's LabelEmbedder)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, train: bool, batch: Optional[int] = None) -> torch.Tensor:
        """Labels [B] (``batch`` B where the caller knows it) -> [B, hidden]."""
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point() or \
                labels.is_complex() or labels.dtype == torch.bool or (batch is not None and labels.shape[0] != batch):
            got = f'{labels.dtype} {tuple(labels.shape)}' if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f'class labels must be an integer tensor [B{"" if batch is None else f"={batch}"}], '
                             f'got {got}')
        if labels.numel() and labels.device.type != 'meta' and (
                labels.min() < 0 or labels.max() > self.num_classes or (
                labels.max() == self.num_classes and self.dropout_prob == 0)):
            raise ValueError(f'class labels must lie in [0, {self.num_classes}) (or == {self.num_classes}, the null '
                             f'label, with class dropout), got {labels.min().item()}..{labels.max().item()}')
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class CaptionEmbedder(nn.Module):
    """PixArt's caption projection (``y_proj``: Mlp caption_channels -> hidden -> hidden, tanh-GELU) and the null
    caption (buffer ``y_embedding`` [token_num, caption_channels]) that replaces dropped captions."""

    def __init__(self, caption_channels: int, hidden_size: int, uncond_prob: float, token_num: int = 120):
        super().__init__()
        self.uncond_prob = uncond_prob
        self.y_proj = Mlp(caption_channels, hidden_size, hidden_size, act_layer=_gelu_tanh, drop=0)
        self.register_buffer('y_embedding', torch.randn(token_num, caption_channels) / caption_channels ** 0.5)

    def forward(self, caption: torch.Tensor, train: bool, force_drop: Optional[torch.Tensor] = None) -> torch.Tensor:
        if caption.ndim != 3 or caption.shape[-1] != self.y_embedding.shape[-1]:
            raise ValueError(f'caption must be [B, L, {self.y_embedding.shape[-1]}], got {tuple(caption.shape)}')
        drop = force_drop
        if drop is None and train and self.uncond_prob > 0:
            drop = torch.rand(caption.shape[0], device=caption.device) < self.uncond_prob
        if drop is not None:
            if caption.shape[1] != self.y_embedding.shape[0]:
                raise ValueError(f'dropping captions needs {self.y_embedding.shape[0]} tokens, got {caption.shape[1]}')
            caption = torch.where(drop.bool()[:, None, None], self.y_embedding.to(caption.dtype), caption)
        return self.y_proj(caption)


def check_patch_embedding(name: str, patch_size: Sequence[int], in_channels: int, embed_dim: int) -> None:
    """Warn when a denoiser's linear patch embedding is narrower than a patch: its pixels then reach the model
    through ``embed_dim`` directions only, and the noise along the others cannot be predicted, so the noise
    loss stays above about (patch values - embed_dim) / patch values at large t, however long it trains."""
    values = in_channels * math.prod(patch_size)
    if embed_dim < values:
        warnings.warn(f'{name}: a patch of {"x".join(map(str, patch_size))} pixels and {in_channels} channels holds '
                      f'{values} values but the patch embedding is {embed_dim} wide, so the noise loss cannot fall '
                      f'below about {(values - embed_dim) / values:.2f} at large t: widen the embedding or use '
                      'smaller patches', stacklevel=3)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: Conv2d (image) or Conv3d (video, patch (pt, p, p)), named ``proj`` as in
    timm's PatchEmbed. Returns tokens [B, N, D] and the token grid."""

    def __init__(self, patch_size: Tuple[int, ...], in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = tuple(patch_size)
        check_patch_embedding('PatchEmbed', self.patch_size, in_channels, embed_dim)
        conv = nn.Conv2d if len(self.patch_size) == 2 else nn.Conv3d
        self.proj = conv(in_channels, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        spatial = tuple(x.shape[2:])
        if len(spatial) != len(self.patch_size):
            raise ValueError(f'expected a {len(self.patch_size)}-D input [B, C, *{len(self.patch_size)} dims], got '
                             f'{tuple(x.shape)}')
        if any(s % p for s, p in zip(spatial, self.patch_size)):
            raise ValueError(f'input size {spatial} is not divisible by the patch size {self.patch_size}')
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


# ---------------------------------------------------------------------------------------------------------------
# Blocks and final layers
# ---------------------------------------------------------------------------------------------------------------
class DiTBlock(nn.Module):
    """DiT block with adaLN-zero: ``adaLN_modulation`` (SiLU, Linear D -> 6D, zero-initialised by the model) gives
    shift/scale/gate for the attention and the MLP from the conditioning vector c [B, D]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, core: Optional[nn.Module] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias=True, core=core)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=_gelu_tanh, drop=0)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, grid_size: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid_size)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class PixArtBlock(nn.Module):
    """PixArt-alpha block (adaLN-single): self-attention, cross-attention to the condition tokens (not modulated),
    MLP; modulation = the block's ``scale_shift_table`` [6, D] + the global ``t_block`` output [B, 6D]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, core: Optional[nn.Module] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qkv_bias=True, core=core)
        self.cross_attn = MultiHeadCrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), act_layer=_gelu_tanh, drop=0)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size ** 0.5)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t0: torch.Tensor, cond_mask: Optional[torch.Tensor] = None,
                grid_size: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
        batch = x.shape[0]
        mods = (self.scale_shift_table[None] + t0.reshape(batch, 6, x.shape[-1])).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods  # each [B, 1, D]
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid_size)
        x = x + self.cross_attn(x, cond, cond_mask)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """DiT's output layer: adaLN (shift, scale) from c, then Linear D -> prod(patch) * out_channels."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class T2IFinalLayer(nn.Module):
    """PixArt's output layer: shift/scale = ``scale_shift_table`` [2, D] + the timestep embedding t [B, D]."""

    def __init__(self, hidden_size: int, patch_volume: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size ** 0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------
def _as_tuple(value: Union[int, Sequence[int]], length: int, what: str) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * length
    value = tuple(int(v) for v in value)
    if len(value) != length:
        raise ValueError(f'{what} must be an int or {length} ints, got {value}')
    return value


class _PatchDenoiser(nn.Module):
    """What DiT and PixArt share: patch embedding, positional embedding, unpatchify, the interface attributes."""

    def _setup_patches(self, input_size, patch_size, in_channels: int, hidden_size: int, out_channels: int,
                       lewei_scale: float = 1.0, pos_embed_parameter: bool = False):
        video = not isinstance(input_size, int)
        if video and len(tuple(input_size)) != 3:
            raise ValueError(f'input_size must be an int (image) or (T, H, W) (video), got {input_size}')
        dims = 3 if video else 2
        self.input_size = tuple(input_size) if video else int(input_size)
        full = tuple(input_size) if video else (input_size, input_size)
        if video and isinstance(patch_size, int):
            self.patch_size = (1, patch_size, patch_size)  # video: by default one frame deep
        else:
            self.patch_size = _as_tuple(patch_size, dims, 'patch_size')
        if any(s % p for s, p in zip(full, self.patch_size)):
            raise ValueError(f'input_size {full} is not divisible by patch_size {self.patch_size}')
        self.base_grid = tuple(s // p for s, p in zip(full, self.patch_size))
        self.in_channels, self.out_channels, self.hidden_size = in_channels, out_channels, hidden_size
        self.x_embedder = PatchEmbed(self.patch_size, in_channels, hidden_size)
        self.lewei_scale = lewei_scale
        pos_embed = torch.zeros(1, math.prod(self.base_grid), hidden_size)
        if pos_embed_parameter:
            # DiT quirk: the fixed embedding is an nn.Parameter with requires_grad=False, so it is counted in the
            # official parameter total (675,129,632 for DiT-XL/2) and lives in the checkpoint.
            self.pos_embed = nn.Parameter(pos_embed, requires_grad=False)
        else:
            self.register_buffer('pos_embed', pos_embed)  # PixArt: a buffer (saved in its checkpoints)
        self._fill_pos_embed()

    def _fill_pos_embed(self) -> None:
        if self.pos_embed.device.type != 'meta':
            self.pos_embed.data.copy_(sincos_pos_embed(self.hidden_size, self.base_grid, self.base_grid,
                                                       self.lewei_scale)[None])

    def pos_embed_for(self, grid: Tuple[int, ...]) -> torch.Tensor:
        """The fixed embedding of a token grid: the stored one at the training size, else computed (PixArt-MS's
        multi-resolution rule: coordinates rescaled to the base grid)."""
        if tuple(grid) == self.base_grid:
            return self.pos_embed[0]
        return sincos_pos_embed(self.hidden_size, grid, self.base_grid, self.lewei_scale).to(self.pos_embed.device)

    def unpatchify(self, x: torch.Tensor, grid: Tuple[int, ...]) -> torch.Tensor:
        """Tokens [B, N, prod(patch) * C] -> [B, C, *spatial] (the official ``nhwpqc -> nchpwq`` order)."""
        batch, channels = x.shape[0], self.out_channels
        x = x.reshape(batch, *grid, *self.patch_size, channels)
        if len(grid) == 2:
            x = torch.einsum('nhwpqc->nchpwq', x)
        else:
            x = torch.einsum('nthwopqc->nctohpwq', x)
        return x.reshape(batch, channels, *(g * p for g, p in zip(grid, self.patch_size)))

    def _embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        if x.shape[1] != self.in_channels:
            raise ValueError(f'expected {self.in_channels} input channels, got x of shape {tuple(x.shape)}')
        tokens, grid = self.x_embedder(x)
        return tokens + self.pos_embed_for(grid).to(tokens.dtype), grid

    @staticmethod
    def _timesteps(t: Union[torch.Tensor, float, int], batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device)
        if t.dtype == torch.bool or t.is_complex():  # True/False were embedded as timesteps 1/0
            raise ValueError(f'timesteps must be real numbers, got {t.dtype}')
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f'timesteps must be a scalar or [B={batch}], got shape {tuple(t.shape)}')
        # NaN made every output NaN. Checked where it costs no device sync (host tensors) and outside compiled graphs.
        if t.is_floating_point() and t.device.type == 'cpu' and not torch.compiler.is_compiling() and \
                not torch.isfinite(t).all():
            raise ValueError(f'timesteps must be finite, got {t.tolist()}')
        return t


class DiT(_PatchDenoiser):
    """DiT (adaLN-zero), class-conditional or unconditional, image or video.

    Args:
        input_size: Latent side (int, square image) or (T, H, W) for video.
        patch_size: Patch side p (image: p x p; video: (1, p, p)) or an explicit tuple.
        in_channels: Latent channels.
        hidden_size, depth, num_heads, mlp_ratio: Transformer width, blocks, heads, MLP ratio.
        class_dropout_prob: Label drop rate for classifier-free guidance (adds the null label row).
        num_classes: Classes; 0 for an unconditional model (no label embedder).
        learn_sigma: Also predict the variance (out_channels = 2 x in_channels), as the official DiT models.
        attention_core: Factory ``block_index -> module`` of the self-attention core (see the module docstring).
    """

    def __init__(self, input_size: Union[int, Sequence[int]] = 32, patch_size: Union[int, Sequence[int]] = 2,
                 in_channels: int = 4, hidden_size: int = 1152, depth: int = 28, num_heads: int = 16,
                 mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1, num_classes: int = 1000,
                 learn_sigma: bool = True, attention_core: Optional[AttentionFactory] = None):
        super().__init__()
        self._setup_patches(input_size, patch_size, in_channels, hidden_size,
                            in_channels * 2 if learn_sigma else in_channels, pos_embed_parameter=True)
        self.learn_sigma = learn_sigma
        self.num_classes = num_classes
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size, num_heads, mlp_ratio, None if attention_core is None else attention_core(i))
            for i in range(depth)])
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier Linear, N(0, 0.02) label/timestep embeddings, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        # DiT takes no other condition: a control map (ControlledDiffusionModel) or a caption was dropped silently
        extra = sorted(k for k, v in cond.items() if v is not None)
        if extra:
            raise ValueError(f'DiT takes no conditions besides labels y, got {extra}')
        tokens, grid = self._embed(x)
        c = self.t_embedder(self._timesteps(t, x.shape[0], x.device))
        if self.y_embedder is not None:
            if y is None:
                raise ValueError(f'this DiT is class-conditional ({self.num_classes} classes): pass labels y')
            c = c + self.y_embedder(y, self.training, x.shape[0])
        elif y is not None:  # the labels were ignored: an unconditional sample where a class was asked for
            raise ValueError('this DiT is unconditional (num_classes=0): it takes no labels y')
        for block in self.blocks:
            tokens = block(tokens, c, grid)
        return self.unpatchify(self.final_layer(tokens, c), grid)


class PixArt(_PatchDenoiser):
    """PixArt-alpha (adaLN-single, cross-attention to conditions), image or video; PixArt-MS micro-conditions.

    Conditions: a caption [B, L, caption_channels] (``caption=``, with an optional ``caption_mask`` [B, L]) through
    ``y_embedder``; or, where ``num_classes > 0`` (synthetic smoke runs without a text encoder), class labels y
    embedded by a DiT LabelEmbedder (``label_embedder``) as a single condition token -- our addition. Without either,
    the null caption ``y_embedding`` is used (unconditional).

    Args:
        input_size, patch_size, in_channels, hidden_size, depth, num_heads, mlp_ratio: As :class:`DiT`.
        class_dropout_prob: Caption/label drop rate for classifier-free guidance.
        pred_sigma: Also predict the variance (out_channels = 2 x in_channels).
        caption_channels: Text-encoder width (4096, T5-XXL); 0 for no caption projection.
        model_max_length: Caption tokens (120 in PixArt-alpha).
        num_classes: Classes for label conditioning; 0 for none.
        micro_conditions: PixArt-MS's image-size and aspect-ratio embedders (``csize_embedder``, ``ar_embedder``,
            hidden/3 each), read from ``img_hw`` [B, 2] and ``aspect_ratio`` [B, 1] (default: the input's).
        lewei_scale: PixArt's positional-embedding scale (1 at 256/512, 2 at 1024).
        attention_core: Factory of the self-attention core.
    """

    def __init__(self, input_size: Union[int, Sequence[int]] = 32, patch_size: Union[int, Sequence[int]] = 2,
                 in_channels: int = 4, hidden_size: int = 1152, depth: int = 28, num_heads: int = 16,
                 mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1, pred_sigma: bool = True,
                 caption_channels: int = 4096, model_max_length: int = 120, num_classes: int = 0,
                 micro_conditions: bool = False, lewei_scale: float = 1.0,
                 attention_core: Optional[AttentionFactory] = None):
        super().__init__()
        self._setup_patches(input_size, patch_size, in_channels, hidden_size,
                            in_channels * 2 if pred_sigma else in_channels, lewei_scale=lewei_scale)
        self.pred_sigma = pred_sigma
        self.num_classes = num_classes
        self.depth = depth
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = (CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
                           if caption_channels > 0 else None)
        self.label_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        if self.y_embedder is None and self.label_embedder is None:
            raise ValueError('PixArt needs a condition: caption_channels > 0 or num_classes > 0')
        self.micro_conditions = micro_conditions
        if micro_conditions:
            if hidden_size % 3:
                raise ValueError(f'micro-conditions need hidden_size divisible by 3, got {hidden_size}')
            self.csize_embedder = SizeEmbedder(hidden_size // 3)
            self.ar_embedder = SizeEmbedder(hidden_size // 3)
        self.blocks = nn.ModuleList([
            PixArtBlock(hidden_size, num_heads, mlp_ratio, None if attention_core is None else attention_core(i))
            for i in range(depth)])
        self.final_layer = T2IFinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """PixArt's initialisation: xavier Linear, N(0, 0.02) timestep/t_block/caption MLPs, zero cross-attention
        output projections and output layer (so every block starts as self-attention + MLP)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.t_block[1].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
            nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        if self.label_embedder is not None:
            nn.init.normal_(self.label_embedder.embedding_table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @staticmethod
    def _check_caption_mask(mask, batch: int, tokens: int) -> None:
        """A key-padding mask [B, L]: True / 1 keeps a token. A [1, L] mask was broadcast over the batch, one of
        another length failed inside the attention, and an additive mask (0 keep, -inf drop) was read inverted."""
        if not torch.is_tensor(mask) or tuple(mask.shape) != (batch, tokens):
            got = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f'caption_mask must be [B={batch}, L={tokens}], got {got}')
        # the values only where that costs no device sync (host tensors) and outside compiled graphs
        if mask.dtype != torch.bool and mask.device.type == 'cpu' and not torch.compiler.is_compiling() and \
                not ((mask == 0) | (mask == 1)).all():
            raise ValueError('caption_mask must hold 0/1 or bools (1 keeps a token), got other values (an additive '
                             '0/-inf mask?)')

    def embed_inputs(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                     caption: Optional[torch.Tensor] = None, caption_mask: Optional[torch.Tensor] = None,
                     img_hw: Optional[torch.Tensor] = None, aspect_ratio: Optional[torch.Tensor] = None) -> Dict:
        """Everything the blocks need: tokens, grid, t (for the final layer), t0 (adaLN-single), cond, cond_mask.

        Shared with the RelaCtrl control net, which runs the blocks itself."""
        batch = x.shape[0]
        tokens, grid = self._embed(x)
        t = self.t_embedder(self._timesteps(t, batch, x.device))
        if self.micro_conditions:
            size = torch.tensor(x.shape[-2:], device=x.device, dtype=torch.float32) * 8  # latents are 1/8 of pixels
            for name, value, width in (('img_hw', img_hw, 2), ('aspect_ratio', aspect_ratio, 1)):
                if value is not None and (not torch.is_tensor(value) or value.numel() != batch * width):
                    got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
                    raise ValueError(f'{name} must be [B={batch}, {width}], got {got}')
            img_hw = size.expand(batch, 2) if img_hw is None else img_hw.reshape(batch, 2)
            aspect_ratio = (size[0] / size[1]).expand(batch, 1) if aspect_ratio is None else \
                aspect_ratio.reshape(batch, 1)
            t = t + torch.cat([self.csize_embedder(img_hw), self.ar_embedder(aspect_ratio)], dim=1)
        t0 = self.t_block(t)
        cond_mask = None
        if caption is not None:
            if self.y_embedder is None:
                raise ValueError('this PixArt has no caption projection (caption_channels=0): pass labels y')
            if y is not None:  # the labels were ignored
                raise ValueError('pass either a caption or labels y to PixArt, not both')
            if caption.ndim == 3 and caption.shape[0] != batch:  # failed in a reshape of the cross-attention
                raise ValueError(f'caption must be [B={batch}, L, C], got {tuple(caption.shape)}')
            if caption_mask is not None:
                self._check_caption_mask(caption_mask, batch, caption.shape[1])
            cond, cond_mask = self.y_embedder(caption, self.training), caption_mask
        elif caption_mask is not None:
            raise ValueError('caption_mask was given without a caption')
        elif self.label_embedder is not None:
            if y is None:
                raise ValueError(f'this PixArt is label-conditioned ({self.num_classes} classes): pass labels y')
            cond = self.label_embedder(y, self.training, batch)[:, None]
        else:
            if y is not None:  # the null caption was used and the labels ignored
                raise ValueError('this PixArt has no label embedder (num_classes=0): it takes a caption, not labels y')
            null = self.y_embedder.y_embedding.to(tokens.dtype)
            cond = self.y_embedder.y_proj(null[None].expand(batch, -1, -1))
        return dict(tokens=tokens, grid=grid, t=t, t0=t0, cond=cond, cond_mask=cond_mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        inputs = self.embed_inputs(x, t, y, **cond)
        tokens = inputs['tokens']
        for block in self.blocks:
            tokens = block(tokens, inputs['cond'], inputs['t0'], inputs['cond_mask'], inputs['grid'])
        return self.unpatchify(self.final_layer(tokens, inputs['t']), inputs['grid'])


# ---------------------------------------------------------------------------------------------------------------
# Variants (official sizes; the official checkpoints are latent models at 4 channels)
# ---------------------------------------------------------------------------------------------------------------
def dit_xl_2(**kwargs) -> DiT:
    """DiT-XL/2: 28 x 1152, 16 heads, 675,129,632 parameters at 256 px (32x32x4 latents, 1000 classes)."""
    return DiT(**dict(dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16), **kwargs))


def dit_l_2(**kwargs) -> DiT:
    return DiT(**dict(dict(depth=24, hidden_size=1024, patch_size=2, num_heads=16), **kwargs))


def dit_b_2(**kwargs) -> DiT:
    return DiT(**dict(dict(depth=12, hidden_size=768, patch_size=2, num_heads=12), **kwargs))


def dit_s_2(**kwargs) -> DiT:
    return DiT(**dict(dict(depth=12, hidden_size=384, patch_size=2, num_heads=6), **kwargs))


def dit_tiny(**kwargs) -> DiT:
    """A test-size DiT: 4 x 64, 4 heads, on 16x16x4 latents, 10 classes."""
    return DiT(**dict(dict(input_size=16, depth=4, hidden_size=64, patch_size=2, num_heads=4, num_classes=10),
                      **kwargs))


def dit_video_tiny(**kwargs) -> DiT:
    """A test-size video DiT: 4 x 64 on 4x8x8x4 latents, patches (1, 2, 2)."""
    return DiT(**dict(dict(input_size=(4, 8, 8), depth=4, hidden_size=64, patch_size=(1, 2, 2), num_heads=4,
                           num_classes=10), **kwargs))


def pixart_xl_2(**kwargs) -> PixArt:
    """PixArt-XL-2 (256/512 px): 28 x 1152, 16 heads, T5-XXL captions (4096 channels, 120 tokens)."""
    return PixArt(**dict(dict(depth=28, hidden_size=1152, patch_size=2, num_heads=16), **kwargs))


def pixart_ms_xl_2(**kwargs) -> PixArt:
    """PixArt-XL-2-1024-MS, RelaCtrl's base: 128x128 latents, micro-conditions, lewei_scale 2."""
    return PixArt(**dict(dict(input_size=128, depth=28, hidden_size=1152, patch_size=2, num_heads=16,
                              micro_conditions=True, lewei_scale=2.0), **kwargs))


def pixart_tiny(**kwargs) -> PixArt:
    """A test-size PixArt: 4 x 64 (RelaCtrl tests use depth 21 to reach block 19), 16x16x4, 10-class labels."""
    return PixArt(**dict(dict(input_size=16, depth=4, hidden_size=64, patch_size=2, num_heads=4, caption_channels=0,
                              num_classes=10), **kwargs))


def pixart_video_tiny(**kwargs) -> PixArt:
    return PixArt(**dict(dict(input_size=(4, 8, 8), depth=4, hidden_size=64, patch_size=(1, 2, 2), num_heads=4,
                              caption_channels=0, num_classes=10), **kwargs))
