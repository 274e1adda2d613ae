"""LaMamba-Diff: a latent diffusion U-Net of local-attention + selective-scan blocks.

Fu et al., "LaMamba-Diff: Linear-Time High-Fidelity Diffusion Models Based on Local Attention and Mamba",
arXiv:2408.02615; official code github.com/yunxiangfu2001/LaMamba-Diff @27b3c1d (MIT), model/lamamba.py
(``LaMambaDiff``, ``LaMambaBlock_conditioned``) with VMamba's SS2D (model/vmamba.py) and its only shipped
configuration configs/LaMamba-DIff-XL.yaml. The README links no checkpoint.

Structure (as the official code builds it; parameter names are the official ones):

- ``patch_embed`` (conv p x p + LayerNorm) plus a learnable ``pos_embed`` [1, R, R, dim] started at MAE's 2-D
  sin-cos values.
- Encoder ``layers``: four stages of :class:`ConditionedLaMambaBlock`, widths [d, 2d, 4d, 4d]; only the first two
  end in a patch merging (resolutions R, R/2, R/4, R/4). Each stage's output before its downsampler is a skip.
- ``mid_layer``: ``bottleneck_depth`` blocks, applied as ``x = x + mid(x)`` (on top of the blocks' own residuals,
  an official quirk kept here).
- Decoder ``layers_up``: widths [4d, 4d, 2d, d], one block more per stage than the encoder (Stable Diffusion's U-Net
  design), patch expanding before the last two stages; each stage adds its skip first.
- Final layer: patch expanding by p, adaLN (shift, scale) on a non-affine LayerNorm, ``final_linear`` to
  2 x in_channels (the official model always predicts the variance too).

The conditioning vector c = t_embedder(t) + y_embedder(y) has width 4d (DiT's embedders); blocks whose width differs
(and every decoder block) project it with ``condition_projection``.

Initialisation follows ``LaMambaDiff._init_weights``: xavier-uniform on every Linear (zero biases; this includes
SS2D's in/out projections), adaLN modulations zeroed. Official quirk kept: ``final_linear`` is *not* zeroed (the
official loop meant to zero it looks for ``.weight`` on the decoder stages and silently does nothing).

Official checkpoints (none is published) load through :func:`convert_official_checkpoint`, which drops the persistent
Swin buffers ``attn.relative_position_index`` and ``attn_mask`` (recomputed here from the input size).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from visionattn.heads.diffusion.dit import (
    LabelEmbedder,
    TimestepEmbedder,
    check_patch_embedding,
    modulate,
    sincos_pos_embed,
)

from visionattn.layers.ss2d import SS2D, ShiftedWindowAttention

__all__ = ['ConditionedLaMambaBlock', 'LaMambaDiff', 'convert_official_checkpoint', 'lamamba_diff_xl',
           'lamamba_diff_xl_512', 'lamamba_diff_tiny']


class ConditionedLaMambaBlock(nn.Module):
    """Official ``LaMambaBlock_conditioned``: three adaLN-gated residuals, SS2D, (shifted-)window attention, MLP.

    ``adaLN_modulation`` (SiLU -> Linear(dim, 9 dim)) regresses shift/scale/gate for each of the three branches::

        x = x + g1 * SS2D(modulate(LN(x), s1, a1))
        x = x + g2 * WindowAttention(modulate(LN(x), s2, a2))
        x = x + g3 * MLP(modulate(LN(x), s3, a3))

    Args:
        dim: Channels.
        condition_dim: Width of the conditioning vector.
        input_resolution: Side of the (square) map this block sees; a map no larger than the window is one window
            and is not shifted (official rule, which also sizes the bias table).
        num_heads: Window-attention heads.
        window_size: Attention window side.
        shift_size: Window shift (window_size // 2 on odd blocks).
        full_condition_project: Project the condition even when its width equals dim (the decoder's blocks).
        mlp_ratio: MLP hidden width / dim.
        drop_path: Stochastic depth.
        ssm_kwargs: Keyword arguments of :class:`visionattn.layers.SS2D`.
    """

    def __init__(self, dim: int, condition_dim: int, input_resolution: int, num_heads: int = 8, window_size: int = 8,
                 shift_size: int = 0, full_condition_project: bool = False, mlp_ratio: float = 4.0,
                 drop_path: float = 0., **ssm_kwargs):
        super().__init__()
        if full_condition_project or condition_dim != dim:
            self.condition_projection = nn.Linear(condition_dim, dim)
        else:
            self.condition_projection = nn.Identity()
        if input_resolution <= window_size:
            window_size, shift_size = input_resolution, 0
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ssm_kwargs)
        self.norm_swin = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(dim, num_heads, window_size, shift_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B, H, W, dim], c [B, condition_dim] -> [B, H, W, dim]."""
        c = self.condition_projection(c)[:, None, None, :]
        (shift_ssm, scale_ssm, gate_ssm, shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp,
         gate_mlp) = self.adaLN_modulation(c).chunk(9, dim=-1)
        # The official block defines but never applies its DropPath (drop_path_rate is 0 in every config).
        x = x + self.drop_path(gate_ssm * self.op(modulate(self.norm(x), shift_ssm, scale_ssm)))
        x = x + self.drop_path(gate_attn * self.attn(modulate(self.norm_swin(x), shift_attn, scale_attn)))
        return x + self.drop_path(gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))


class PatchEmbed(nn.Module):
    """Conv p x p (stride p) + LayerNorm, channels-last output (official ``PatchEmbed2D_``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        check_patch_embedding('LaMambaDiff', (patch_size, patch_size), in_chans, embed_dim)
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's 2x2 patch merging on [B, H, W, C]: LayerNorm(4C) then Linear(4C, out) (official ``PatchMerging2D``)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % 2 or x.shape[2] % 2:
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchExpanding(nn.Module):
    """Linear(dim, s^2 * out) then pixel shuffle by s and LayerNorm(out), on [B, H, W, C] (official
    ``PatchExpanding2D`` with out = dim / 2, and ``FinalPatchExpanding2D`` with out = dim)."""

    def __init__(self, dim: int, scale: int, out_dim: int):
        super().__init__()
        self.scale, self.out_dim = scale, out_dim
        self.expand = nn.Linear(dim, scale * scale * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        s = self.scale
        x = self.expand(x).view(batch, height, width, s, s, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, self.out_dim)
        return self.norm(x)


class _Stage(nn.Module):
    """A run of conditioned blocks with official names (``blocks``, ``downsample`` / ``upsample``)."""

    def __init__(self, blocks: List[nn.Module], downsample: Optional[nn.Module] = None,
                 upsample: Optional[nn.Module] = None):
        super().__init__()
        self.upsample = upsample
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, c, use_reentrant=False)
            else:
                x = block(x, c)
        return x


class LaMambaDiff(nn.Module):
    """The LaMamba-Diff U-Net denoiser (visionattn's diffusion denoiser interface).

    Args:
        input_size: Latent side R (image_size / 8 for the SD VAE); the positional embedding is learned at R x R.
        patch_size: Patch side p.
        in_channels: Latent channels.
        embed_dim: Width d of the first stage; the stages are [d, 2d, 4d, 4d] (the official int ``dims``).
        depths: Encoder blocks per stage (four stages); the decoder has one more per stage.
        bottleneck_depth: Blocks of the middle stage.
        num_heads: Window-attention heads (one int for all stages, as the official train.py, or four).
        window_size: Attention window side.
        mlp_ratio: MLP hidden width / channels.
        num_classes: Classes; 0 for an unconditional model (the official one keeps a 1-row null-label table).
        class_dropout_prob: Label drop rate for classifier-free guidance.
        learn_sigma: Predict the variance too (out_channels = 2 x in_channels, as the official model always does).
        d_state: State size of the scans.
        ssm_ratio: SS2D inner width / channels.
        ssm_conv: SS2D depthwise conv size.
        ssm_conv_bias: Bias in that conv (False in the XL config).
        continuous_scan: Snake scan orders (LaMamba-Diff's); False for VMamba's raster ones.
        drop_path_rate: Stochastic depth (0 in the official config).
    """

    def __init__(self, input_size: int = 32, patch_size: int = 1, in_channels: int = 4, embed_dim: int = 320,
                 depths: Sequence[int] = (2, 2, 2, 2), bottleneck_depth: int = 2, num_heads=8, window_size: int = 8,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, class_dropout_prob: float = 0.1,
                 learn_sigma: bool = True, d_state: int = 1, ssm_ratio: float = 2.0, ssm_conv: int = 3,
                 ssm_conv_bias: bool = False, continuous_scan: bool = True, drop_path_rate: float = 0.):
        super().__init__()
        if len(depths) != 4:
            raise ValueError(f'LaMambaDiff has four stages (its resolution schedule is fixed), got depths {depths}')
        if isinstance(num_heads, int):
            num_heads = (num_heads,) * 4
        if len(num_heads) != 4:
            raise ValueError(f'num_heads must be an int or four ints, got {num_heads}')
        if input_size % (patch_size * 4):
            raise ValueError(f'input_size {input_size} must be divisible by 4 x patch_size ({4 * patch_size}): the '
                             'U-Net halves the token map twice')
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes, self.learn_sigma = num_classes, learn_sigma
        dims = [embed_dim, 2 * embed_dim, 4 * embed_dim, 4 * embed_dim]
        self.dims = dims
        res0 = input_size // patch_size
        self.condition_dim = cond = dims[-1]
        ssm = dict(d_state=d_state, ssm_ratio=ssm_ratio, d_conv=ssm_conv, conv_bias=ssm_conv_bias,
                   continuous_scan=continuous_scan)

        def blocks(dim, n, res, heads, full_project=False):
            return [ConditionedLaMambaBlock(dim, cond, res, heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                            full_project, mlp_ratio, drop_path_rate, **ssm) for i in range(n)]

        self.patch_embed = PatchEmbed(patch_size, in_channels, dims[0])
        self.pos_embed = nn.Parameter(torch.zeros(1, res0, res0, dims[0]))
        self.t_embedder = TimestepEmbedder(cond)
        # Unconditional: the official code keeps a 1-row table and drops every label (class_dropout_prob = 1).
        self.y_embedder = LabelEmbedder(num_classes, cond, class_dropout_prob if num_classes > 0 else 1.0)
        resolutions = [res0, res0 // 2, res0 // 4, res0 // 4]
        self.layers = nn.ModuleList([
            _Stage(blocks(dims[i], depths[i], resolutions[i], num_heads[i]),
                   downsample=PatchMerging(dims[i], dims[i + 1]) if i < 2 else None)
            for i in range(4)])
        self.mid_layer = _Stage(blocks(dims[-1], bottleneck_depth, res0 // 4, num_heads[-1]))
        dims_up, heads_up, res_up = dims[::-1], tuple(num_heads)[::-1], resolutions[::-1]
        depths_up = [d + 1 for d in depths[::-1]] if depths[-1] else [0] + [d + 1 for d in depths[::-1][1:]]
        self.layers_up = nn.ModuleList([
            _Stage(blocks(dims_up[i], depths_up[i], res_up[i], heads_up[i], full_project=True),
                   upsample=PatchExpanding(dims_up[i - 1], 2, dims_up[i - 1] // 2) if i >= 2 else None)
            for i in range(4)])
        self.final_up = PatchExpanding(dims[0], patch_size, dims[0])
        self.final_condition_projection = nn.Linear(cond, dims[0])
        self.norm_final = nn.LayerNorm(dims[0], elementwise_affine=False, eps=1e-6)
        self.final_adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dims[0], 2 * dims[0]))
        self.final_linear = nn.Linear(dims[0], self.out_channels)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The official ``_init_weights`` (see the module docstring for its quirk)."""
        if self.pos_embed.is_meta:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        side = self.pos_embed.shape[1]
        self.pos_embed.copy_(sincos_pos_embed(self.dims[0], (side, side)).view(1, side, side, -1))
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for module in self.modules():
            if isinstance(module, ConditionedLaMambaBlock):
                nn.init.zeros_(module.adaLN_modulation[-1].weight)
                nn.init.zeros_(module.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_adaLN_modulation[-1].bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in (*self.layers, self.mid_layer, *self.layers_up):
            stage.grad_checkpointing = enable

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f'LaMambaDiff expects latents [B, {", ".join(map(str, expected))}] (its positional '
                             f'embedding is learned at that size), got {list(x.shape)}')

    def condition(self, t: torch.Tensor, y: Optional[torch.Tensor], batch: int, device) -> torch.Tensor:
        """c = t_embedder(t) + y_embedder(y); y None means the null label (unconditional / guidance branch)."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f'timesteps must be a scalar or [B={batch}], got shape {tuple(t.shape)}')
        if y is None:
            if self.num_classes > 0 and self.y_embedder.dropout_prob == 0:
                raise ValueError(f'this LaMambaDiff is class-conditional ({self.num_classes} classes) with no null '
                                 'label: pass labels y')
            y = torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
        return self.t_embedder(t) + self.y_embedder(y, self.training, batch)

    def forward_encoder(self, x: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        x = self.patch_embed(x) + self.pos_embed
        skips = []
        for stage in self.layers:
            x = stage(x, c)
            skips.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return x, skips

    def forward_decoder(self, x: torch.Tensor, c: torch.Tensor, skips: List[torch.Tensor]) -> torch.Tensor:
        for i, stage in enumerate(self.layers_up):
            if stage.upsample is not None:
                x = stage.upsample(x)
            x = stage(x + skips[-(i + 1)], c)
        return x

    def forward_final(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.final_adaLN_modulation(self.final_condition_projection(c)[:, None, None]).chunk(2, dim=-1)
        x = modulate(self.norm_final(self.final_up(x)), shift, scale)
        return self.final_linear(x).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None, **cond) -> torch.Tensor:
        """x [B, C, R, R] latents, t [B] timesteps, y [B] labels (index num_classes = null) -> [B, out_channels,
        R, R] (epsilon, then the variance interpolation when ``learn_sigma``)."""
        if cond:
            raise ValueError(f'LaMambaDiff takes no extra conditions, got {sorted(cond)}')
        self._check_input(x)
        c = self.condition(t, y, x.shape[0], x.device)
        x, skips = self.forward_encoder(x, c)
        x = x + self.mid_layer(x, c)  # official: the middle stage is residual on top of its blocks' residuals
        x = self.forward_decoder(x, c, skips)
        return self.forward_final(x, c)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance as the official code: the batch is [conditional half, null-label half] and the
        guided epsilon (all in_channels channels) is written to both halves."""
        if len(x) % 2:  # an odd batch lost its last row and failed on the timesteps' length
            raise ValueError(f'forward_with_cfg takes [conditional half, null-label half]: an even batch, got {len(x)}')
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        eps, rest = out[:, :self.in_channels], out[:, self.in_channels:]
        cond_eps, uncond_eps = eps.chunk(2)
        guided = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)

    def scan_flops(self, batch: int = 1) -> int:
        """Multiply-adds of every selective scan in one forward pass at ``input_size``.

        VMamba's count (:func:`visionattn.layers.ss2d.selective_scan_flops`): the FLOP counter cannot see the scan.
        """
        res0 = self.input_size // self.patch_size
        side = {0: res0, 1: res0 // 2, 2: res0 // 4, 3: res0 // 4}
        total = 0
        for i, stage in enumerate(self.layers):
            total += sum(b.op.scan_flops(batch, side[i], side[i]) for b in stage.blocks)
        total += sum(b.op.scan_flops(batch, side[3], side[3]) for b in self.mid_layer.blocks)
        for i, stage in enumerate(self.layers_up):
            total += sum(b.op.scan_flops(batch, side[3 - i], side[3 - i]) for b in stage.blocks)
        return total


def convert_official_checkpoint(checkpoint: Dict[str, Any], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """An official LaMamba-Diff checkpoint (train.py saves ``{'model', 'ema', 'opt', 'args'}``) -> this model's
    state dict: the EMA (or raw) weights, with the Swin buffers ``relative_position_index`` and ``attn_mask`` dropped
    (recomputed here). Every other name is the official one."""
    state = checkpoint.get('ema' if use_ema else 'model', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise TypeError(f'expected a state dict or a dict holding one, got {type(checkpoint).__name__}')
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.endswith(('.relative_position_index', '.attn_mask'))}


def lamamba_diff_xl(**kwargs) -> LaMambaDiff:
    """LaMamba-Diff-XL at 256 px (32x32x4 latents): configs/LaMamba-DIff-XL.yaml + train.py defaults (8 heads,
    window 8, 1000 classes, class dropout 0.1)."""
    return LaMambaDiff(**dict(dict(input_size=32, embed_dim=320, depths=(2, 2, 2, 2), bottleneck_depth=2,
                                   num_heads=8, window_size=8, d_state=1), **kwargs))


def lamamba_diff_xl_512(**kwargs) -> LaMambaDiff:
    """LaMamba-Diff-XL at 512 px (64x64x4 latents): 16 heads, as the official train_lamamba.sh trains at 512 (its
    train.py default is 8); the positional embedding is learned at the latent size."""
    return lamamba_diff_xl(**dict(dict(input_size=64, num_heads=16), **kwargs))


def lamamba_diff_tiny(**kwargs) -> LaMambaDiff:
    """A test-size LaMamba-Diff: d = 16 ([16, 32, 64, 64]), one block per encoder stage, 2 heads, window 4, on
    16x16x4 latents, 10 classes."""
    return LaMambaDiff(**dict(dict(input_size=16, embed_dim=16, depths=(1, 1, 1, 1), bottleneck_depth=1,
                                   num_heads=2, window_size=4, num_classes=10), **kwargs))

