"""S2LIC learned image compression (Wang et al., arXiv 2403.14471) on top of CompressAI.

Structure follows the official ``wyq2021/S2LIC`` ``code/s2lic.py`` (names and dims): a Swin analysis/synthesis pair
with residual SwinV2 blocks (RSTB) and a dense-block enhancement module, a hyperprior with an entropy bottleneck, and
the ACGC entropy model (10 channel slices, checkerboard anchor/non-anchor per slice, channel-wise attention context
ACCTX and global-inter attention context AGCTX over the previous slices, entropy parameters, latent residual
prediction). The official repo does not publish ACCTX, AGCTX, EnhModule, RSTB or the hyper transforms (they live in a
modified CompressAI fork); their definitions here are inferred from the paper and say so where they are defined.
Entropy coding is CompressAI's: EntropyBottleneck strings for z and one rANS stream (BufferedRansEncoder /
RansDecoder) for y. Runs on CPU and GPU (no ``torch.cuda.synchronize``).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import subpel_conv3x3
from compressai.models.base import CompressionModel
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste
from timm.models.swin_transformer_v2 import SwinTransformerV2Block

__all__ = ['S2LIC', 'S2LIC_PRESETS', 'checkerboard_mask', 'build_s2lic']

SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256, 64


def checkerboard_mask(height: int, width: int, device=None) -> torch.Tensor:
    """Boolean (H, W) mask, True at anchor positions ((h + w) even)."""
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return (rows + cols) % 2 == 0


class RSTB(nn.Module):
    """Residual SwinV2 transformer block on NCHW maps: x + conv(SwinV2 blocks(x)).

    Inferred from the paper (residual Swin block as in SwinIR); uses timm's SwinV2 block with dynamic masks so any
    size divisible by the window works. Blocks alternate regular and shifted windows.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int = 8, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.window_size = window_size
        self.blocks = nn.ModuleList([
            SwinTransformerV2Block(dim, input_resolution=(window_size * 2, window_size * 2), num_heads=num_heads,
                                   window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                                   dynamic_mask=True, always_partition=True, mlp_ratio=mlp_ratio,
                                   drop_path=drop_path)
            for i in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.window_size or width % self.window_size:
            raise ValueError(f'RSTB input {height}x{width} is not divisible by window size {self.window_size}')
        tokens = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            tokens = block(tokens)
        return x + self.conv(tokens.permute(0, 3, 1, 2))


class EnhModule(nn.Module):
    """Dense-block enhancement module on the RGB image (paper Sec. 3; definition not published, inferred).

    Four densely connected 3x3 convs with ``nf`` features and a residual output. The official g_s calls the same
    module type with ``rev=True``; here g_s owns its own instance and ``rev`` subtracts the residual (approximate
    inverse), which we state rather than claim exact invertibility.
    """

    def __init__(self, nf: int = 64, in_ch: int = 3, num_layers: int = 4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv2d(in_ch + i * nf, nf, 3, padding=1) for i in range(num_layers))
        self.fuse = nn.Conv2d(in_ch + num_layers * nf, in_ch, 1)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(F.leaky_relu(layer(torch.cat(features, 1)), 0.2))
        residual = self.fuse(torch.cat(features, 1))
        return x - residual if rev else x + residual


class ACCTX(nn.Module):
    """Adaptive channel-wise attention context over previous slices (inferred from the paper; not published).

    Transposed (channel x channel) multi-head attention with a learnt temperature, then a conv head to ``out_dim``.
    """

    def __init__(self, dim: int, out_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.out = nn.Sequential(nn.Conv2d(dim, 128, 3, padding=1), nn.GELU(), nn.Conv2d(128, out_dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(batch, self.num_heads, channels // self.num_heads, height * width) for t in (q, k, v))
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        mixed = (attn.softmax(-1) @ v).reshape(batch, channels, height, width)
        return self.out(x + self.proj(mixed))


class AGCTX(nn.Module):
    """Global-inter attention context with deformable attention (inferred from the paper; not published).

    Single-scale deformable attention (Deformable-DETR style): every position predicts ``num_points`` sampling
    offsets and weights per head over the previous slices, samples them bilinearly and mixes them.
    """

    def __init__(self, dim: int, out_dim: int, num_heads: int, num_points: int = 4):
        super().__init__()
        self.num_heads, self.num_points = num_heads, num_points
        self.value = nn.Conv2d(dim, dim, 1)
        self.offsets = nn.Conv2d(dim, num_heads * num_points * 2, 3, padding=1)
        self.weights = nn.Conv2d(dim, num_heads * num_points, 3, padding=1)
        self.out = nn.Sequential(nn.Conv2d(dim, 128, 3, padding=1), nn.GELU(), nn.Conv2d(128, out_dim, 3, padding=1))
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        heads, points = self.num_heads, self.num_points
        value = self.value(x).reshape(batch * heads, channels // heads, height, width)
        offsets = self.offsets(x).reshape(batch, heads, points, 2, height, width)
        weights = self.weights(x).reshape(batch, heads, points, height, width).softmax(2)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype),
                                torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype), indexing='ij')
        base = torch.stack((xs, ys), -1)  # grid_sample wants (x, y)
        scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=x.device, dtype=x.dtype)
        grid = base + offsets.permute(0, 1, 2, 4, 5, 3) * scale  # offsets are in pixels
        grid = grid.reshape(batch * heads, points * height, width, 2)
        sampled = F.grid_sample(value, grid, align_corners=True)  # (B*heads, C/h, points*H, W)
        sampled = sampled.reshape(batch, heads, channels // heads, points, height, width)
        mixed = (sampled * weights.unsqueeze(2)).sum(3).reshape(batch, channels, height, width)
        return self.out(x + mixed)


def _entropy_parameters(in_ch: int, out_ch: int) -> nn.Sequential:
    """EntropyParameters(in -> out): 1x1 conv MLP (as in CompressAI's channel-wise models)."""
    return nn.Sequential(nn.Conv2d(in_ch, 320, 1), nn.GELU(), nn.Conv2d(320, 256, 1), nn.GELU(),
                         nn.Conv2d(256, 128, 1), nn.GELU(), nn.Conv2d(128, out_ch, 1))


def _latent_residual_prediction(in_ch: int, out_ch: int) -> nn.Sequential:
    """LatentResidualPrediction (Minnen & Singh 2020): conv stack predicting the rounding residual."""
    return nn.Sequential(nn.Conv2d(in_ch, 224, 3, padding=1), nn.GELU(), nn.Conv2d(224, 128, 3, padding=1),
                         nn.GELU(), nn.Conv2d(128, out_ch, 3, padding=1))


class S2LIC(CompressionModel):
    """S2LIC: Swin analysis/synthesis, hyperprior, ACGC slice-wise checkerboard entropy model.

    Args:
        N: Hyperprior / transform width (paper 192).
        M: Latent channels (paper 320); must be ``num_slices * slice_channels``.
        num_slices: Channel slices (paper 10).
        depths: RSTB depths (paper [1, 2, 3, 1, 1]; g_a uses the first three, g_s mirrors them).
        heads: RSTB heads (paper [4, 8, 16, 16, 16]).
        window_size: Swin window (paper 8).
        enh_features: Width of the enhancement module (paper 64).
        drop_path: Stochastic depth rate (paper 0.1).
    """

    def __init__(self, N: int = 192, M: int = 320, num_slices: int = 10, depths=(1, 2, 3, 1, 1),
                 heads=(4, 8, 16, 16, 16), window_size: int = 8, enh_features: int = 64, drop_path: float = 0.1):
        super().__init__()
        if M % num_slices:
            raise ValueError(f'M={M} is not divisible by num_slices={num_slices}')
        # g_a and g_s use the first three entries (the paper lists five); a short list failed in an IndexError and a
        # head count that does not divide N in a reshape inside timm's SwinV2 attention at the first forward.
        if len(depths) < 3 or len(heads) < 3:
            raise ValueError(f'depths and heads need at least 3 entries (one per RSTB stage), got depths={depths}, '
                             f'heads={heads}')
        bad_heads = [h for h in heads[:3] if h < 1 or N % h]
        if bad_heads:
            raise ValueError(f'heads {list(heads[:3])}: each must divide N={N}, got {bad_heads}')
        self.N, self.M, self.num_slices, self.slice_ch = N, M, num_slices, M // num_slices
        self.window_size = window_size
        self.g_a_enh = EnhModule(enh_features)
        self.g_a = nn.Sequential(
            conv(3, N, 5, 2), RSTB(N, depths[0], heads[0], window_size, drop_path=drop_path),
            conv(N, N, 3, 2), RSTB(N, depths[1], heads[1], window_size, drop_path=drop_path),
            conv(N, N, 3, 2), RSTB(N, depths[2], heads[2], window_size, drop_path=drop_path),
            conv(N, M, 3, 2))
        self.g_s = nn.Sequential(
            deconv(M, N, 3, 2), RSTB(N, depths[2], heads[2], window_size, drop_path=drop_path),
            deconv(N, N, 3, 2), RSTB(N, depths[1], heads[1], window_size, drop_path=drop_path),
            deconv(N, N, 3, 2), RSTB(N, depths[0], heads[0], window_size, drop_path=drop_path),
            subpel_conv3x3(N, 3, 2))
        self.g_s_enh = EnhModule(enh_features)
        # HyperAnalysis / HyperSynthesis (not published): the mean-scale hyper transforms of Minnen 2018.
        self.h_a = nn.Sequential(conv(M, N, 3, 1), nn.GELU(), conv(N, N, 5, 2), nn.GELU(), conv(N, N, 5, 2))
        self.h_s = nn.Sequential(deconv(N, M, 5, 2), nn.GELU(), deconv(M, M * 3 // 2, 5, 2), nn.GELU(),
                                 conv(M * 3 // 2, 2 * M, 3, 1))
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        cs = self.slice_ch
        # Slice 0 has no previous slices; its context is zeros of the same width (keeps the official 2M+96 input).
        self.acctx = nn.ModuleList([ACCTX(cs * i, 64, max(i, 1)) if i else nn.Identity() for i in range(num_slices)])
        self.agctx = nn.ModuleList([AGCTX(cs * i, 32, max(i, 1)) if i else nn.Identity() for i in range(num_slices)])
        self.ep_anchor = nn.ModuleList([_entropy_parameters(2 * M + 96, 2 * cs) for _ in range(num_slices)])
        self.ep_nonanchor = nn.ModuleList([_entropy_parameters(2 * M + 96, 2 * cs) for _ in range(num_slices)])
        self.lrp_anchor = nn.ModuleList([_latent_residual_prediction(M + (i + 1) * cs, cs) for i in range(num_slices)])
        self.lrp_nonanchor = nn.ModuleList(
            [_latent_residual_prediction(M + (i + 1) * cs, cs) for i in range(num_slices)])

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f'S2LIC expects (B, 3, H, W) images, got shape {tuple(x.shape)}')
        if x.shape[0] == 0:  # timm's SwinV2 windows fail on it in a reshape
            raise ValueError('S2LIC got an empty batch (B = 0): pass at least one image')
        height, width = x.shape[-2:]
        # g_a runs windows of size w at /2, /4, /8 (sides multiples of 8 w) and h_a downsamples y (/16) by 4 (sides
        # multiples of 64): both at once is their lcm (max() let e.g. 96 through for window 12, which failed deep
        # in the hyper synthesis).
        need = math.lcm(64, 8 * self.window_size)
        if height % need or width % need:
            raise ValueError(f'S2LIC input {height}x{width}: both sides must be multiples of {need} (pad first)')

    def _context(self, index: int, previous: list[torch.Tensor], hyper: torch.Tensor) -> torch.Tensor:
        if index == 0:
            zeros = hyper.new_zeros(hyper.shape[0], 96, *hyper.shape[-2:])
            return torch.cat([hyper, zeros], 1)
        prev = torch.cat(previous, 1)
        return torch.cat([hyper, self.acctx[index](prev), self.agctx[index](prev)], 1)

    def _slice_params(self, index, previous, hyper):
        ctx = self._context(index, previous, hyper)
        scale_a, mean_a = self.ep_anchor[index](ctx).chunk(2, 1)
        # Official quirk (s2lic.py): non-anchor parameters take the same input as the anchor ones, no local context.
        scale_n, mean_n = self.ep_nonanchor[index](ctx).chunk(2, 1)
        return scale_a, mean_a, scale_n, mean_n

    def _lrp(self, net, latent_means, previous, y_hat_part):
        lrp = net(torch.cat([latent_means] + previous + [y_hat_part], 1))
        return 0.5 * torch.tanh(lrp)

    def forward(self, x: torch.Tensor) -> dict:
        """Training/eval pass: returns x_hat and likelihoods {'y', 'z'}; in eval y_hat equals the decoded one."""
        self._check_input(x)
        y = self.g_a(self.g_a_enh(x))
        z = self.h_a(y)
        _, z_likelihoods = self.entropy_bottleneck(z)
        z_hat = quantize_ste(z - self.entropy_bottleneck._get_medians()) + self.entropy_bottleneck._get_medians()
        hyper = self.h_s(z_hat)
        latent_means = hyper[:, self.M:]
        anchor = checkerboard_mask(*y.shape[-2:], device=y.device).to(y.dtype)
        previous, likelihoods = [], []
        for index, y_slice in enumerate(y.chunk(self.num_slices, 1)):
            scale_a, mean_a, scale_n, mean_n = self._slice_params(index, previous, hyper)
            scales = scale_a * anchor + scale_n * (1 - anchor)
            means = mean_a * anchor + mean_n * (1 - anchor)
            _, lik = self.gaussian_conditional(y_slice, scales, means)
            likelihoods.append(lik)
            y_hat = quantize_ste(y_slice - means) + means
            # LRP after the anchor pass (sees anchors only) and after the non-anchor pass, as in the official code.
            y_anchor = y_hat * anchor
            y_anchor = y_anchor + self._lrp(self.lrp_anchor[index], latent_means, previous, y_anchor) * anchor
            y_full = y_anchor + y_hat * (1 - anchor)
            y_full = y_full + self._lrp(self.lrp_nonanchor[index], latent_means, previous, y_full) * (1 - anchor)
            previous.append(y_full)
        x_hat = self.g_s_enh(self.g_s(torch.cat(previous, 1)), rev=True)
        return {'x_hat': x_hat, 'likelihoods': {'y': torch.cat(likelihoods, 1), 'z': z_likelihoods}}

    def update(self, scale_table=None, force: bool = False) -> bool:
        """Build CDF tables (EntropyBottleneck + GaussianConditional) before compress/decompress."""
        if scale_table is None:
            scale_table = torch.exp(torch.linspace(torch.log(torch.tensor(SCALES_MIN)),
                                                   torch.log(torch.tensor(float(SCALES_MAX))), SCALES_LEVELS))
        return super().update(scale_table=scale_table, force=force)

    def _check_tables(self, who: str) -> None:
        """The entropy coders' CDF tables must be built: compressai's rANS coder crashed the process (segmentation
        fault) on the empty tables of a GaussianConditional that ``update`` never reached."""
        for name in ('entropy_bottleneck', 'gaussian_conditional'):
            model = getattr(self, name)
            if model._quantized_cdf.numel() == 0 or model._offset.numel() == 0 or model._cdf_length.numel() == 0:
                raise ValueError(f'S2LIC.{who}: the {name} has no CDF tables; call update(force=True) first (after '
                                 f'loading or changing the weights)')

    def _code_slices(self, hyper, y=None, decoder=None):
        """Shared encode/decode walk: with ``y`` returns (symbols, indexes) lists; with ``decoder`` decodes."""
        gc = self.gaussian_conditional
        cdf, cdf_lengths, offsets = gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(), \
            gc.offset.reshape(-1).int().tolist()
        height, width = hyper.shape[-2:]
        anchor_mask = checkerboard_mask(height, width, device=hyper.device)
        latent_means = hyper[:, self.M:]
        symbols, indexes, previous = [], [], []
        y_slices = y.chunk(self.num_slices, 1) if y is not None else [None] * self.num_slices
        for index, y_slice in enumerate(y_slices):
            scale_a, mean_a, scale_n, mean_n = self._slice_params(index, previous, hyper)
            y_hat = hyper.new_zeros(hyper.shape[0], self.slice_ch, height, width)
            for mask, scales, means, lrp_net in ((anchor_mask, scale_a, mean_a, self.lrp_anchor[index]),
                                                 (~anchor_mask, scale_n, mean_n, self.lrp_nonanchor[index])):
                idx = gc.build_indexes(scales[..., mask])
                if y_slice is not None:
                    q = gc.quantize(y_slice[..., mask], 'symbols', means[..., mask])
                    symbols.extend(q.reshape(-1).tolist())
                    indexes.extend(idx.reshape(-1).tolist())
                else:
                    flat = idx.reshape(-1).tolist()
                    q = torch.tensor(decoder.decode_stream(flat, cdf, cdf_lengths, offsets), device=hyper.device)
                    q = q.reshape(idx.shape)
                y_hat[..., mask] = gc.dequantize(q, means[..., mask]).to(y_hat.dtype)
                # Anchor pass: non-anchors are still zero; non-anchor pass sees the whole slice (as in forward).
                correction = self._lrp(lrp_net, latent_means, previous, y_hat)
                y_hat[..., mask] = y_hat[..., mask] + correction[..., mask]
            previous.append(y_hat)
        return symbols, indexes, torch.cat(previous, 1)

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict:
        """Encode images to real bitstreams: {'strings': [y_strings, z_strings], 'shape': z spatial shape}."""
        self._check_input(x)
        self._check_tables('compress')
        y = self.g_a(self.g_a_enh(x))
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        y_strings = []
        for b in range(x.shape[0]):
            hyper = self.h_s(z_hat[b:b + 1])
            symbols, indexes, _ = self._code_slices(hyper, y=y[b:b + 1])
            gc = self.gaussian_conditional
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(symbols, indexes, gc.quantized_cdf.tolist(),
                                        gc.cdf_length.reshape(-1).int().tolist(), gc.offset.reshape(-1).int().tolist())
            y_strings.append(encoder.flush())
        return {'strings': [y_strings, z_strings], 'shape': tuple(z.shape[-2:])}

    @torch.no_grad()
    def decompress(self, strings: list, shape) -> dict:
        """Decode bitstreams from :meth:`compress` back to ``{'x_hat': (B, 3, H, W)}`` (not clamped)."""
        if len(strings) != 2 or len(strings[0]) != len(strings[1]):
            raise ValueError('S2LIC.decompress expects [y_strings, z_strings] with one string per image each')
        self._check_tables('decompress')
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape)
        y_hats = []
        for b, y_string in enumerate(strings[0]):
            hyper = self.h_s(z_hat[b:b + 1])
            decoder = RansDecoder()
            decoder.set_stream(y_string)
            _, _, y_hat = self._code_slices(hyper, decoder=decoder)
            y_hats.append(y_hat)
        x_hat = self.g_s_enh(self.g_s(torch.cat(y_hats, 0)), rev=True)
        return {'x_hat': x_hat}


# The presets build_s2lic knows (tools/codec.py offers them as --size).
S2LIC_PRESETS = {
    'paper': {},
    'small': dict(N=96, M=160, depths=(1, 1, 1, 1, 1), heads=(2, 4, 4, 4, 4), enh_features=32, drop_path=0.0),
    'tiny': dict(N=32, M=40, depths=(1, 1, 1, 1, 1), heads=(2, 2, 2, 2, 2), window_size=4, enh_features=8,
                 drop_path=0.0),
}


def build_s2lic(size: str = 'paper', **kwargs) -> S2LIC:
    """Build S2LIC: ``'paper'`` (N=192, M=320, official settings) or ``'small'`` (N=96, M=160, for fast training)."""
    if size not in S2LIC_PRESETS:
        raise ValueError(f'unknown S2LIC size {size!r}; choose from {sorted(S2LIC_PRESETS)}')
    return S2LIC(**{**S2LIC_PRESETS[size], **kwargs})
