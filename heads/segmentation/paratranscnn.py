"""ParaTransCNN: a CNN branch and a transformer pyramid in parallel, fused by SE channel attention at three scales.

Paper: "ParaTransCNN: Parallelized TransCNN Encoder for Medical Image Segmentation" (Sun et al., arXiv 2401.15307).
Official code: https://github.com/HongkunSun/ParaTransCNN (model/ParaTransCNN.py, model/transformer.py, commit
2702b8b; the repository has no licence file, so nothing here is copied from it: the structure, attribute names and
defaults follow it so that its state dicts load strictly).

Facts of the official model that this file keeps:
- CNN branch: torchvision's ResNet-34 stem without the max-pool, so layer1..layer4 give e1..e4 at H/2, H/4, H/8,
  H/16 (64/64/128/256/512 channels); only e2..e4 are fused, e1 only feeds layer2.
- Transformer pyramid: a 4x4/stride-4 patch embedding (H/4, ``dim``) then a 2x2/stride-2 one per level (H/8 at
  2*dim, H/16 at 4*dim), each level a pre-norm ViT (``depth`` blocks, ``heads`` heads, qkv without bias, MLP ratio 2,
  GELU, dropout 0.1 everywhere) with **no positional embedding**.
- Fusion: concatenate [transformer map, CNN map] at each scale and re-weight the channels with an SE block (r=16,
  no biases).
- Decoder: two conv3x3-BN-ReLU per level (channels kept), transposed convolutions 2x, 2x and 4x, a 1x1 classifier.
- The official ``mlp_dim`` list is [2, 4, 8, 16] * dim indexed by level while the level widths are [1, 2, 4] * dim,
  so every level has an MLP ratio of 2 (640, 1280 and 2560 hidden units at dim=320).

Parameter count at the defaults (num_classes=9): 245,468,937, the same as the official module built from commit
2702b8b (torchvision ResNet-34 without its unused max-pool and fc).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['ParaTransCNN', 'SEBlock', 'DecoderBottleneckLayer', 'TransformerModel', 'PARATRANSCNN_PARAMS']

# Parameters of the official model at its defaults (num_classes=9) and with 2 classes (AVT), counted from the official
# module structure of commit 2702b8b with torchvision 0.29's resnet34(weights=None).
PARATRANSCNN_PARAMS = {9: 245_468_937, 2: 245_466_690}


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens [B, N, C]; qkv without bias, dropout on the weights and the output."""

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = False, dropout_rate: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f'attention width {dim} is not divisible by heads={heads}')
        self.num_heads = heads
        self.dropout_rate = dropout_rate
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, channels // self.num_heads).permute(2, 0, 3, 1, 4)
        # Same math as softmax(q k^T / sqrt(d)) with dropout on the weights, without materialising them.
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_rate if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, channels)))


class FeedForward(nn.Module):
    """Linear -> GELU -> dropout -> linear -> dropout (``net.0`` and ``net.3`` hold the weights, as officially)."""

    def __init__(self, dim: int, hidden_dim: int, dropout_rate: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout_rate),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _PreNorm(nn.Module):
    """LayerNorm, the wrapped module, then dropout (the official attention sub-block has one; the MLP's has none)."""

    def __init__(self, dim: int, fn: nn.Module, dropout_rate: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fn(self.norm(x)))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(x)


class TransformerModel(nn.Module):
    """One level of the pyramid: ``depth`` pre-norm blocks (attention, MLP) over tokens, no positional embedding.

    Args:
        dim: Token width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_dim: Hidden width of the MLP.
        dropout_rate: Dropout after the attention block and inside the MLP.
        attn_dropout_rate: Dropout on the attention weights and after its projection.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout_rate: float = 0.1,
                 attn_dropout_rate: float = 0.1):
        super().__init__()
        blocks: List[nn.Module] = []
        for _ in range(depth):
            blocks.append(_Residual(_PreNorm(dim, SelfAttention(dim, heads, dropout_rate=attn_dropout_rate),
                                             dropout_rate)))
            blocks.append(_Residual(_PreNorm(dim, FeedForward(dim, mlp_dim, dropout_rate))))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel attention: global average -> FC (C/r) -> ReLU -> FC (C) -> sigmoid -> scale."""

    def __init__(self, channel: int, r: int = 16):
        super().__init__()
        if channel // r < 1:
            raise ValueError(f'SE block: {channel} channels with reduction {r} leaves no hidden unit')
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // r, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // r, channel, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.fc(self.avg_pool(x).flatten(1))
        return x * weights[:, :, None, None]


class DecoderBottleneckLayer(nn.Module):
    """Two conv3x3 -> BN -> ReLU with the channel count unchanged (official names conv1/norm1 and conv3/norm3)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.norm3 = nn.BatchNorm2d(in_channels)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.norm1(self.conv1(x)))
        return self.relu3(self.norm3(self.conv3(x)))


def _probe_feature_info(name: str, in_chans: int, kwargs: Dict) -> Tuple[List[int], List[int]]:
    """Reductions and channels of a timm backbone's ``features_only`` levels, built on the meta device if possible."""
    try:
        with torch.device('meta'):
            probe = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans, **kwargs)
    except Exception:  # a few models compute values at construction and cannot be built on the meta device
        probe = timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans, **kwargs)
    return list(probe.feature_info.reduction()), list(probe.feature_info.channels())


class ParaTransCNN(nn.Module):
    """ParaTransCNN (Sun et al., 2024): ResNet-34 and a three-level transformer pyramid in parallel, SE fusion,
    and a convolutional decoder with transposed-convolution upsampling.

    Args:
        num_classes: Output classes (9 for Synapse, 2 for AVT), background included.
        in_chans: Input channels (the official code repeats grey slices to 3).
        dim: Width of the first transformer level; the levels are dim, 2*dim, 4*dim wide.
        depth: Blocks per transformer level.
        heads: Attention heads of every level.
        patch_size: The first patch embedding is (2*patch_size)-strided, the next two patch_size-strided.
        cnn_backbone: 'resnet34' (default) is the official branch: ResNet-34 without the max-pool, under the official
            attribute names (firstconv, firstbn, encoder1..4). Any other timm or zoo model name is built with
            ``features_only=True`` and its levels at reductions 2*patch_size, 4*patch_size and 8*patch_size are fused
            (the fusion and decoder widths follow their channels).
        pretrained: Load ImageNet weights into the CNN branch (for 'resnet34', torchvision's weights, the ones the
            official code loads: timm's 'resnet34.tv_in1k').
        dropout_rate: Dropout in the transformer blocks.
        attn_dropout_rate: Dropout of the attention weights and projection.
        se_reduction: Reduction ratio of the SE blocks.
        backbone_kwargs: Extra ``timm.create_model`` arguments of the CNN branch.
    """

    def __init__(self, num_classes: int = 9, in_chans: int = 3, dim: int = 320, depth: Sequence[int] = (3, 3, 3),
                 heads: int = 8, patch_size: int = 2, cnn_backbone: str = 'resnet34', pretrained: bool = False,
                 dropout_rate: float = 0.1, attn_dropout_rate: float = 0.1, se_reduction: int = 16,
                 backbone_kwargs: Optional[Dict] = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if len(depth) != 3:
            raise ValueError(f'depth must give the blocks of the 3 transformer levels, got {depth}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.dim = dim
        self.depth = tuple(depth)
        self.heads = heads
        self.patch_size = patch_size
        self.reductions = (2 * patch_size, 4 * patch_size, 8 * patch_size)
        backbone_kwargs = dict(backbone_kwargs or {})

        self.official_cnn = cnn_backbone.split('.')[0] == 'resnet34' and not backbone_kwargs.get('features_only')
        if self.official_cnn:
            if patch_size != 2:
                raise ValueError('the ResNet-34 branch gives features at H/4, H/8, H/16, which needs patch_size=2, '
                                 f'got {patch_size}; use a features_only backbone for other patch sizes')
            name = cnn_backbone if '.' in cnn_backbone else 'resnet34.tv_in1k'  # the weights the official code loads
            resnet = timm.create_model(name, pretrained=pretrained, in_chans=in_chans, **backbone_kwargs)
            # The official branch: the stem without its max-pool, then the four stages.
            self.firstconv, self.firstbn, self.firstrelu = resnet.conv1, resnet.bn1, resnet.act1
            self.encoder1, self.encoder2 = resnet.layer1, resnet.layer2
            self.encoder3, self.encoder4 = resnet.layer3, resnet.layer4
            cnn_channels = (128, 256, 512)
        else:
            found_reductions, found_channels = _probe_feature_info(cnn_backbone, in_chans, backbone_kwargs)
            missing = [r for r in self.reductions if r not in found_reductions]
            if missing:
                raise ValueError(f'CNN branch {cnn_backbone!r} has features at reductions {found_reductions}, but '
                                 f'ParaTransCNN (patch_size={patch_size}) fuses reductions {list(self.reductions)}; '
                                 f'missing {missing}')
            indices = tuple(found_reductions.index(r) for r in self.reductions)
            self.cnn = timm.create_model(cnn_backbone, features_only=True, out_indices=indices, pretrained=pretrained,
                                         in_chans=in_chans, **backbone_kwargs)
            cnn_channels = tuple(found_channels[i] for i in indices)
        self.cnn_channels = cnn_channels
        c4, c8, c16 = cnn_channels
        widths = (dim, 2 * dim, 4 * dim)

        self.vit_1 = TransformerModel(widths[0], self.depth[0], heads, 2 * widths[0], dropout_rate, attn_dropout_rate)
        self.vit_2 = TransformerModel(widths[1], self.depth[1], heads, 2 * widths[1], dropout_rate, attn_dropout_rate)
        self.vit_3 = TransformerModel(widths[2], self.depth[2], heads, 2 * widths[2], dropout_rate, attn_dropout_rate)
        self.patch_embed_1 = nn.Conv2d(in_chans, widths[0], kernel_size=2 * patch_size, stride=2 * patch_size)
        self.patch_embed_2 = nn.Conv2d(widths[0], widths[1], kernel_size=patch_size, stride=patch_size)
        self.patch_embed_3 = nn.Conv2d(widths[1], widths[2], kernel_size=patch_size, stride=patch_size)

        fused_16, fused_8, fused_4 = widths[2] + c16, widths[1] + c8, widths[0] + c4
        self.SE_1 = SEBlock(fused_16, se_reduction)
        self.SE_2 = SEBlock(fused_8, se_reduction)
        self.SE_3 = SEBlock(fused_4, se_reduction)
        self.decoder1 = DecoderBottleneckLayer(fused_16)
        self.decoder2 = DecoderBottleneckLayer(2 * fused_8)
        self.decoder3 = DecoderBottleneckLayer(fused_4 + fused_8)
        self.up3_1 = nn.ConvTranspose2d(fused_16, fused_8, kernel_size=2, stride=2)
        self.up2_1 = nn.ConvTranspose2d(2 * fused_8, fused_8, kernel_size=2, stride=2)
        self.up1_1 = nn.ConvTranspose2d(fused_4 + fused_8, dim, kernel_size=2 * patch_size, stride=2 * patch_size)
        self.out = nn.Conv2d(dim, num_classes, kernel_size=1)

    def _cnn_features(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not self.official_cnn:
            return list(self.cnn(x))
        e1 = self.encoder1(self.firstrelu(self.firstbn(self.firstconv(x))))  # H/2: feeds layer2 only
        e2 = self.encoder2(e1)
        e3 = self.encoder3(e2)
        return [e2, e3, self.encoder4(e3)]

    @staticmethod
    def _transformer_level(x: torch.Tensor, embed: nn.Module, vit: nn.Module) -> torch.Tensor:
        x = embed(x)
        batch, channels, height, width = x.shape
        tokens = vit(x.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes, H, W] of images [B, in_chans, H, W] with H and W divisible by 8*patch_size."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f'ParaTransCNN expects [B, {self.in_chans}, H, W] images, got {tuple(x.shape)}')
        stride = self.reductions[-1]
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise ValueError(f'ParaTransCNN needs H and W divisible by {stride}, got {tuple(x.shape[-2:])}')
        e2, e3, e4 = self._cnn_features(x)
        v1 = self._transformer_level(x, self.patch_embed_1, self.vit_1)
        v2 = self._transformer_level(v1, self.patch_embed_2, self.vit_2)
        v3 = self._transformer_level(v2, self.patch_embed_3, self.vit_3)
        for cnn, vit in ((e2, v1), (e3, v2), (e4, v3)):
            if cnn.shape[-2:] != vit.shape[-2:]:
                raise ValueError(f'CNN feature {tuple(cnn.shape)} and transformer feature {tuple(vit.shape)} differ '
                                 'in size: the CNN branch does not reduce by the expected factors')

        y = self.up3_1(self.decoder1(self.SE_1(torch.cat([v3, e4], dim=1))))
        y = self.up2_1(self.decoder2(torch.cat([self.SE_2(torch.cat([v2, e3], dim=1)), y], dim=1)))
        y = self.up1_1(self.decoder3(torch.cat([self.SE_3(torch.cat([v1, e2], dim=1)), y], dim=1)))
        return self.out(y)
