"""Partial convolution and partial visual attention: layers that work on a fraction of the channels.

Partial convolution (PConv): Chen et al., "Run, Don't Walk: Chasing Higher FLOPS for Faster Neural Networks",
CVPR 2023, arXiv:2303.03667 (github.com/JierunChen/FasterNet). Partial visual attention: Huang et al.,
"Partial Convolution Meets Visual Attention" (PATNet), arXiv:2503.03148; the authors' code is the PATConv of
github.com/haiduo/PartialNet @679cfc0 (MIT), models/partialnet.py and models/irpe.py.

A PConv runs a 3×3 conv on the first ``C / n_div`` channels and leaves the other channels untouched. PATNet
gives those untouched channels a cheap attention instead:

- :class:`PartialChannelAttention` (PAT_ch's mixer): enhanced Gaussian channel attention, a gate computed from
  the mean and standard deviation of every untouched channel, followed by BatchNorm.
- :class:`PartialSelfAttention` (PAT_sf's mixer, last stage): LayerNorm and multi-head self-attention over all
  positions with iRPE's Euclidean relative-position bias.
- :class:`PartialSpatialAttention` (PAT_sp, appended to the MLP): half of the channels are gated by a one-channel
  spatial map, the other half go through a 1×1 conv.

The self-attention here is plain ``scaled_dot_product_attention`` with the bias as an additive mask: visionattn
has no shared attention op for global attention with a relative-position bias yet. The bias is gathered from its
table by the custom op ``visionattn::patnet_rel_bias`` (issue 27): a contiguous (heads, L, L) tensor the compiler
cannot re-lay out, given to SDPA without a batch dimension so no dense 4-D copy of it exists for inductor's
channels-last layout optimisation to make heads-last.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, use_fused_attn
from torch import nn
from torch.jit import Final

from visionattn.ops.cache import size_cached
from visionattn.ops.checks import positive_int

__all__ = [
    'PartialConv', 'GaussianChannelAttention', 'PartialChannelAttention', 'PartialSpatialAttention',
    'EuclideanRelPosSelfAttention2d', 'PartialSelfAttention', 'euclidean_rpe_index', 'patnet_rel_bias',
]


# Shape checks are torch.fx leaves (a traced model keeps them as calls) and stay scriptable.
@torch.fx.wrap
def _check_channels(x: torch.Tensor, channels: int, layer: str) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f'{layer} expects an input of shape (B, {channels}, H, W), got {x.shape}')
    return x


@torch.fx.wrap
def _check_two_positions(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] * x.shape[-2] < 2:
        raise ValueError(
            f'GaussianChannelAttention pools a std over positions and needs at least 2 of them; got a feature '
            f'map of shape {x.shape} (the input image is too small)')
    return x


@torch.fx.wrap
def _mean_std(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and std over the positions side by side: (B, C, 1, 2), the layout the (1, 2) kernel reads."""
    flat = x.flatten(2)
    if flat.shape[0] == 0:  # no image: no std of nothing (torch warns about its degrees of freedom)
        return flat.new_zeros(0, flat.shape[1], 1, 2)
    std, mean = torch.std_mean(flat, -1, keepdim=True)  # one pass over the map for both (issue 27)
    return torch.stack((mean, std), dim=-1)


class PartialConv(nn.Module):
    """A k×k convolution on the first ``dim // n_div`` channels; the remaining channels pass through untouched.

    Subclasses give the untouched channels their own operation by overriding :meth:`mix_untouched`.

    Args:
        dim: Input (and output) channels.
        n_div: The convolved part is ``dim // n_div`` channels (4 in FasterNet and PATNet).
        kernel_size: Kernel of the partial convolution (odd; padding keeps the spatial size).
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, n_div: int = 4, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        # floats failed in torch.empty (a TypeError naming no argument)
        dim, n_div = positive_int('PartialConv', 'dim', dim), positive_int('PartialConv', 'n_div', n_div)
        if dim // n_div < 1:
            raise ValueError(f'PartialConv needs 1 <= n_div <= dim; got dim={dim}, n_div={n_div}')
        if kernel_size % 2 != 1:
            raise ValueError(f'PartialConv needs an odd kernel_size to keep the spatial size, got {kernel_size}')
        self.dim = dim
        self.dim_conv = dim // n_div
        self.dim_untouched = dim - self.dim_conv
        self.conv = nn.Conv2d(
            self.dim_conv, self.dim_conv, kernel_size, padding=kernel_size // 2, bias=False, device=device,
            dtype=dtype)

    def mix_untouched(self, x: torch.Tensor) -> torch.Tensor:
        """What happens to the channels the convolution skips: nothing, in a plain PConv."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_and_mix(x)

    def conv_and_mix(self, x: torch.Tensor) -> torch.Tensor:
        """The convolved channels, then the untouched ones after :meth:`mix_untouched`, concatenated."""
        convolved, untouched = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        return torch.cat((self.conv(convolved), self.mix_untouched(untouched)), dim=1)


@torch.fx.wrap
def _pooled_batch_norm(
        z: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
        running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], training: bool,
        momentum: Optional[float], eps: float,
) -> torch.Tensor:
    """BatchNorm of per-sample vectors (B, C, 1, 1); a batch of one in training uses the running statistics."""
    use_batch_stats = training and z.shape[0] > 1
    return F.batch_norm(
        z, running_mean, running_var, weight, bias, use_batch_stats, 0.1 if momentum is None else momentum, eps)


class GaussianChannelAttention(nn.Module):
    """PATNet's enhanced Gaussian channel attention: a channel gate from each channel's mean and std.

    Per channel, the spatial mean and (unbiased) standard deviation form a 2-vector; a dense
    ``Conv2d(C, C, (1, 2))`` mixes them across channels, BatchNorm and a hard sigmoid make the gate. The std
    needs at least two positions; a single-position map is refused rather than gated by NaN.

    The BatchNorm sees one vector per sample, so batch statistics need at least two samples: in training, a batch
    of one is normalised with the running statistics (which it leaves unchanged) where PartialNet's code raises.

    Args:
        channels: Input (and output) channels.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        self.channels = channels
        self.fc = nn.Conv2d(channels, channels, kernel_size=(1, 2), bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(channels, device=device, dtype=dtype)
        self.gate = nn.Hardsigmoid()

    def gate_values(self, x: torch.Tensor) -> torch.Tensor:
        """The gate [B, C, 1, 1] that :meth:`forward` multiplies ``x`` by."""
        stats = _mean_std(_check_two_positions(x))
        bn = self.bn
        # The BatchNorm's own mode, as the official module's self.bn(...) call follows it: detection recipes put
        # BatchNorms in eval inside a training model (it used batch statistics and updated its running ones there),
        # and timm's freeze_batch_norm_2d swaps in a FrozenBatchNorm2d (no momentum: it failed), always running stats.
        if hasattr(bn, 'momentum'):  # an nn.BatchNorm2d (hasattr: static under TorchScript)
            batch_stats, momentum = bn.training, bn.momentum
        else:  # timm's FrozenBatchNorm2d: running statistics whatever the mode
            batch_stats, momentum = False, None
        z = _pooled_batch_norm(self.fc(stats), bn.weight, bn.bias, bn.running_mean, bn.running_var, batch_stats,
                               momentum, bn.eps)
        return self.gate(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_values(x)


class PartialChannelAttention(PartialConv):
    """PAT_ch's mixer: PConv on ``dim // n_div`` channels, Gaussian channel attention + BatchNorm on the rest.

    Args:
        dim: Input (and output) channels.
        n_div: The convolved part is ``dim // n_div`` channels.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, n_div: int = 4, device=None, dtype=None):
        super().__init__(dim, n_div, device=device, dtype=dtype)
        self.attn = GaussianChannelAttention(self.dim_untouched, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(self.dim_untouched, device=device, dtype=dtype)

    def mix_untouched(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.attn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            # not traced (an fx graph would keep the fold for calls with autograd) nor compiled (Inductor fuses the
            # plain layers itself)
            if not (self.training or torch.is_grad_enabled() or isinstance(x, torch.fx.Proxy)
                    or torch.compiler.is_compiling() or self.norm.running_var is None or self.norm.weight is None):
                return self._inference_fold(x)
        return self.conv_and_mix(x)

    @torch.jit.unused
    def _inference_fold(self, x: torch.Tensor) -> torch.Tensor:
        # The BatchNorm of x * gate is one affine map per (image, channel), x * (gate * scale) + shift, written
        # straight into the output's channels: one pass over the untouched channels where BN(x * gate) and the
        # concatenation take three (issue 27). Same values up to rounding.
        convolved, untouched = torch.split(x, [self.dim_conv, self.dim_untouched], dim=1)
        norm = self.norm
        # recomputed on every call (four small kernels): a cache keyed on version counters would miss edits made
        # through .data and silently keep old statistics
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        shift = torch.addcmul(norm.bias, norm.running_mean, scale, value=-1.)
        gate = self.attn.gate_values(untouched) * scale[:, None, None]
        out = torch.empty_like(x)
        # computed in the promoted dtype (float32 under autocast), written in x's
        torch.addcmul(shift[:, None, None], untouched, gate, out=out[:, self.dim_conv:])
        out[:, :self.dim_conv].copy_(self.conv(convolved))
        return out


class PartialSpatialAttention(nn.Module):
    """PAT_sp: appended after the MLP's last 1×1 conv.

    The first ``dim - int(dim * partial)`` channels are multiplied by a hard-sigmoid spatial map (a 1×1 conv to
    ``num_maps`` channels, broadcast when it is 1) and batch-normed; the other ``int(dim * partial)`` channels
    are batch-normed and then mixed by a 1×1 conv. PartialNet's ``partial_spatial_attn_layer_reverse``.

    Args:
        dim: Input (and output) channels.
        num_maps: Channels of the spatial gate (PATNet uses 1, shared by all gated channels).
        partial: Fraction of channels on the 1×1-conv side.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(self, dim: int, num_maps: int = 1, partial: float = 0.5, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.dim_conv = int(partial * dim)
        self.dim_gated = dim - self.dim_conv
        if self.dim_conv < 1 or self.dim_gated < 1:
            raise ValueError(f'PartialSpatialAttention needs both parts non-empty; got dim={dim}, partial={partial}')
        num_maps = positive_int('PartialSpatialAttention', 'num_maps', num_maps)
        if num_maps not in (1, self.dim_gated):
            # the gate multiplies the gated channels: one map shared by all, or one map per channel (any other count
            # failed in the product at the first forward)
            raise ValueError(f'PartialSpatialAttention: num_maps={num_maps!r} must be 1 or the {self.dim_gated} gated '
                             f'channels')
        self.gate_conv = nn.Conv2d(self.dim_gated, num_maps, 1, bias=False, **dd)
        self.gate = nn.Hardsigmoid()
        self.gated_norm = nn.BatchNorm2d(self.dim_gated, **dd)
        self.conv_norm = nn.BatchNorm2d(self.dim_conv, **dd)
        self.conv = nn.Conv2d(self.dim_conv, self.dim_conv, 1, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gated, mixed = torch.split(x, [self.dim_gated, self.dim_conv], dim=1)
        gated = self.gated_norm(gated * self.gate(self.gate_conv(gated)))
        return torch.cat((gated, self.conv(self.conv_norm(mixed))), dim=1)


def euclidean_rpe_index(
        height: int, width: int, alpha: float, beta: float, gamma: float, device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Bucket of every (query, key) pair of an ``height × width`` map under iRPE's Euclidean method.

    Wu et al., "Rethinking and Improving Relative Position Encoding for Vision Transformer", ICCV 2021, eq. 18: the
    rounded Euclidean distance ``d`` of two positions maps to ``d`` when ``d <= alpha`` and to
    ``round(alpha + ln(d / alpha) / ln(gamma / alpha) * (beta - alpha))``, capped at ``beta``, beyond. Buckets are
    shifted by ``int(beta)`` as in iRPE, so they lie in ``[int(beta), 2 * int(beta)]`` of a table of
    ``2 * int(beta) + 1`` entries; the lower half of the table is never used by a distance (iRPE's layout).

    Returns:
        Long tensor of shape ``(height * width, height * width)``, row-major positions.
    """
    positions = torch.arange(height * width, device=device)
    rows = torch.div(positions, width, rounding_mode='floor').float()
    cols = (positions % width).float()
    distance = torch.sqrt((rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2).round()
    far = alpha + torch.log(distance.clamp(min=alpha) / alpha) / math.log(gamma / alpha) * (beta - alpha)
    bucket = torch.where(distance <= alpha, distance, far.round().clamp(max=beta))
    return bucket.long() + int(beta)


@torch.library.custom_op('visionattn::patnet_rel_bias', mutates_args=())
def patnet_rel_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[:, index]`` as a new contiguous tensor of shape ``(table.shape[0], *index.shape)``, in table's dtype.

    The same values and gradient as the plain indexing, but opaque to torch.compile, so inductor cannot choose the
    layout of the gathered bias (issue 27: it stored it heads-last, which CUDA's memory-efficient SDPA backward
    refuses). The backward scatter-adds the gradient into the table's shape with ``index_add`` (fp32 on CPU: the
    same sums, in the same order, as the indexing's own backward).

    Args:
        table: (heads, entries) bias table.
        index: Long tensor of table entries, any shape.
    """
    heads = table.shape[0]
    return torch.index_select(table, 1, index.reshape(-1)).view((heads,) + tuple(index.shape))


@patnet_rel_bias.register_fake
def _(table, index):
    return table.new_empty((table.shape[0],) + tuple(index.shape))


def _patnet_rel_bias_setup_context(ctx, inputs, output):
    table, index = inputs
    ctx.save_for_backward(index)
    ctx.table_shape = tuple(table.shape)


def _patnet_rel_bias_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    grad_table = grad.new_zeros(ctx.table_shape).index_add(1, index.reshape(-1), grad.reshape(grad.shape[0], -1))
    return grad_table, None


patnet_rel_bias.register_autograd(_patnet_rel_bias_backward, setup_context=_patnet_rel_bias_setup_context)


@torch.fx.wrap
def _rel_pos_bias(
        table: torch.Tensor, height: int, width: int, alpha: float, beta: float, gamma: float,
) -> torch.Tensor:
    """(heads, L, L) additive attention bias, broadcast over the batch; a torch.fx leaf (it depends on the map size).

    Gathered by the ``visionattn::patnet_rel_bias`` custom op on every call, eager and compiled: a contiguous tensor
    the compiler cannot re-lay out. It stays 3-D (no batch dimension) up to SDPA: inductor's layout optimisation
    makes dense 4-D tensors upstream of a convolution channels-last, which for a (1, heads, L, L) bias is heads-last
    (issue 27); SDPA's own expansion to 4-D is a stride-0 view it leaves alone.
    """
    if torch.jit.is_scripting():  # its own branch: TorchScript compiles neither the cache nor is_compiling()
        index = euclidean_rpe_index(height, width, alpha, beta, gamma, device=table.device)
    elif torch.compiler.is_compiling():  # traced into the graph, where it folds to a constant
        index = euclidean_rpe_index(height, width, alpha, beta, gamma, device=table.device)
    else:
        index = _cached_rpe_index(height, width, alpha, beta, gamma, table.device)
    return torch.ops.visionattn.patnet_rel_bias(table, index)


# The bucket table depends only on the map size: eager calls build it once (about 10 small ops, 0.65 ms per attention
# block at 7 x 7 on a CPU core).
_cached_rpe_index = size_cached(32)(euclidean_rpe_index)


class EuclideanRelPosSelfAttention2d(nn.Module):
    """Multi-head self-attention over every position of an NCHW map with iRPE's Euclidean bias on the keys.

    As PartialNet's ``RPEAttention`` with ``get_rpe_config(ratio, method='euc', mode='bias', shared_head=False,
    rpe_on='k')``: ``qkv`` without bias, ``proj`` with bias, a per-head bias table of ``2 * int(2 * ratio) + 1``
    entries (zero-initialised) indexed by the bucket of the Euclidean distance, added to the scaled logits.

    Args:
        dim: Channels (the token width).
        num_heads: Attention heads; must divide ``dim``.
        qkv_bias: Bias in the qkv projection.
        attn_drop: Dropout on the attention probabilities (training only).
        proj_drop: Dropout after the output projection.
        rpe_ratio: iRPE's ``ratio``: alpha = ratio, beta = 2·ratio, gamma = 8·ratio.
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """
    fused_attn: Final[bool]

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            qkv_bias: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            rpe_ratio: float = 20.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dim, num_heads = (positive_int('EuclideanRelPosSelfAttention2d', name, value)
                          for name, value in (('dim', dim), ('num_heads', num_heads)))
        if dim % num_heads:
            raise ValueError(f'{num_heads} attention heads do not divide {dim} channels')
        dd = dict(device=device, dtype=dtype)
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.alpha, self.beta, self.gamma = 1. * rpe_ratio, 2. * rpe_ratio, 8. * rpe_ratio
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * int(self.beta) + 1, **dd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_channels(x, self.dim, 'EuclideanRelPosSelfAttention2d')
        height, width = x.shape[-2], x.shape[-1]
        tokens = x.flatten(2).transpose(1, 2)  # B, L, C
        q, k, v = self.qkv(tokens).unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        bias = _rel_pos_bias(self.rpe_table, height, width, self.alpha, self.beta, self.gamma).to(q.dtype)
        drop = self.attn_drop if self.training else 0.
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = F.dropout(attn.softmax(dim=-1), p=drop, training=self.training)
            out = attn @ v
        out = self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))  # B, L, C
        return out.transpose(1, 2).unflatten(-1, (height, width))


class PartialSelfAttention(PartialConv):
    """PAT_sf's mixer: PConv on ``dim // n_div`` channels, LayerNorm + relative-position self-attention on the rest.

    Args:
        dim: Input (and output) channels.
        n_div: The convolved part is ``dim // n_div`` channels.
        num_heads: Attention heads over the ``dim - dim // n_div`` untouched channels.
        attn_drop: Attention-probability dropout (PartialNet: 0.1).
        proj_drop: Dropout after the attention's projection (PartialNet: 0.1).
        rpe_ratio: iRPE ratio (PartialNet: 20).
        device: Device for the parameters.
        dtype: Data type for the parameters.
    """

    def __init__(
            self,
            dim: int,
            n_div: int = 4,
            num_heads: int = 4,
            attn_drop: float = 0.1,
            proj_drop: float = 0.1,
            rpe_ratio: float = 20.,
            device=None,
            dtype=None,
    ):
        super().__init__(dim, n_div, device=device, dtype=dtype)
        self.norm = LayerNorm2d(self.dim_untouched, device=device, dtype=dtype)
        self.attn = EuclideanRelPosSelfAttention2d(
            self.dim_untouched, num_heads, attn_drop=attn_drop, proj_drop=proj_drop, rpe_ratio=rpe_ratio,
            device=device, dtype=dtype)

    def mix_untouched(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.norm(x))
