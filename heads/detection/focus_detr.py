"""Focus-DETR: a DINO detector whose encoder only updates the foreground tokens picked by a learned selector.

Paper: Zheng et al., "Less is More: Focus Attention for Efficient DETR", ICCV 2023 (arXiv 2307.12612).
Official code: https://github.com/huawei-noah/noah-research/tree/master/Focus-DETR (Apache-2.0; the same files are in
IDEA-Research/detrex ``projects/focus_detr/``), on detrex's DINO layers and detectron2's ResNet. Nothing is copied:
this file is written afresh in plain PyTorch, keeping the official module names (so that official checkpoints
convert by renaming the backbone only, see :mod:`.convert`), hyper-parameters and initialisation.

Facts of the official model that this file keeps (``modeling/focus_detr.py``, ``focus_detr_transformer.py``,
``transformer_layer.py``, ``configs/models/focus_detr_r50.py``):

- Backbone: ResNet-50 with FrozenBN everywhere, stem frozen (detectron2 ``freeze_at=1``: the stem only; res2 trains),
  res3-res5 (strides 8/16/32) into a ChannelMapper (1x1 conv + GN(32) to 256) plus a stride-64 level (3x3/s2 conv
  of the last backbone map + GN); Xavier-uniform convs with zero bias.
- Positions: sine, 128 features per axis, temperature 10000, normalised with offset -0.5 and scale 2*pi, plus one
  learned ``level_embeds`` row per level (normal init).
- Foreground token selector: the tokens (feature + position) go through ``enc_output`` (Linear) and
  ``enc_output_norm`` (LN) (padding and border tokens zeroed first, as the two-stage proposals do); the
  ``enc_mask_predictor`` (LN, Linear, GELU; local half + token-mean global half; 256-128-64-1 MLP with GELU) scores
  the coarsest level first, then each finer level after ``x += x * up(score_coarser) * alpha[i]`` (bilinear,
  align_corners, raw logits, ``alpha`` three scalars U(-0.3, 0.3)). Padding tokens get the batch minimum. Each image
  keeps ``int(valid * rho) + 1`` tokens (rho 0.5); encoder layer l updates the top ``int(cascade[l] * max_keep)`` by
  score (cascade 1.0, 0.8, 0.6, 0.6, 0.4, 0.2), and only an image's first ``keep_b`` of them are written back.
- Encoder layer (``OESM, encoder_cross_attn, norm, ffn, norm``): multi-category score = max-class logit of the
  two-stage class head ``class_embed[num_decoder_layers]`` (shared by all encoder layers) times the foreground
  logit; the top ``topk_sa`` (300) of the selected tokens run MHA among themselves (+ residual) then ``norm2`` and
  are scattered back; then every selected token runs deformable attention (+ residual) whose value is the ORIGINAL
  flattened neck features (never updated by the encoder), then LN, FFN 2048 (+ residual), LN. Dropout 0.
- Two-stage: proposals from the encoder memory (``enc_output``/``enc_output_norm`` again, the same modules),
  ``class_embed[6]`` / ``bbox_embed[6]``, top-900 by max-class logit; content queries are the learned
  ``tgt_embed``, reference boxes the detached proposals.
- Decoder (DINO): query position = ``ref_point_head``(sine(4-d reference box * valid ratios)); MHA self-attention
  (dn attention mask) -> LN -> deformable cross-attention -> LN -> FFN -> LN; iterative box refinement on the
  un-normalised output with detached references, predictions from the ``norm``-ed output on the NON-detached
  previous refinement (look forward twice).
- Contrastive denoising: ``dn_number`` 100 -> 100 // max_gt groups of a positive and a negative copy of every box,
  label noise 0.5 (half of it flips a label), box noise 1.0 (negatives pushed 1-2x further), attention mask: the
  matching queries cannot see the dn queries, dn groups cannot see each other.
- Heads: 7 ``class_embed`` Linear (bias -log(99)) and 7 ``bbox_embed`` 3-layer MLPs (last layer zero), the 7th for
  the two-stage proposals; ``label_enc`` Embedding(num_classes, 256) kept in the graph with a 0 * weight term.
- Inference: sigmoid, top-300 over queries x classes, cxcywh -> xyxy in input pixels; no NMS.

Differences: padding masks are always used (the official eval path sets them to zero, which only matters for
batched inference); ``topk_sa``, the two-stage top-k and the keep counts are clamped to the available tokens so that
tiny inputs run; backbones other than ResNets are supported through timm's ``features_only``.

Parameter count (R50, num_classes=80 as the official config): 49,339,920 as ``sum(p.numel() for p in
model.parameters())`` (FrozenBN affine terms are buffers in both implementations; the frozen 7x7 stem conv, 9,408,
counts), 49,330,512 trainable; 49,362,525 with 91 classes (``FOCUS_DETR_R50_PARAMS``). The official figure is
derived in tests/test_focus_detr.py from the official module structure (detectron2 ResNet-50, detrex's layers and
the Focus-DETR modules; the aliased ``class_embed``/``bbox_embed``/``enhance_MCSP`` modules counted once).
"""
import copy
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch import nn
from torchvision.ops import box_convert

from visionattn.layers import (
    FFN,
    MLP,
    ChannelMapper,
    MultiheadAttention,
    MultiScaleDeformableAttention,
    PositionEmbeddingSine,
)

from ..segmentation.decoders import FeatureBackbone
from .criterion import FocusDETRCriterion
from .matcher import HungarianMatcher

__all__ = ['FocusDETR', 'FocusDETRTransformer', 'FocusDETREncoder', 'FocusDETREncoderLayer', 'FocusDETRDecoder',
           'FocusDETRDecoderLayer', 'MaskPredictor', 'prepare_for_cdn', 'get_sine_pos_embed', 'inverse_sigmoid',
           'build_part', 'FOCUS_DETR_R50_PARAMS', 'OFFICIAL_CASCADE_RATIOS']

# sum(p.numel() for p in FocusDETR('resnet50', num_classes=80).parameters()); see the module docstring.
FOCUS_DETR_R50_PARAMS = {80: 49_339_920, 91: 49_362_525}
# The official per-encoder-layer fractions of the kept tokens that each layer updates.
OFFICIAL_CASCADE_RATIOS = (1.0, 0.8, 0.6, 0.6, 0.4, 0.2)

PartConfig = Union[Mapping[str, Any], nn.Module, None]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def build_part(cfg: PartConfig, what: str, default_type: type, registry: str = 'MODELS', **given) -> nn.Module:
    """A sub-module of :class:`FocusDETR` from its config, mmdet style.

    Args:
        cfg: An ``nn.Module`` (used as it is), or a dict of keyword arguments with an optional ``type``: a class
            (the pure-Python configs) or a name registered in visionattn's ``registry`` (looked up, importing
            mmengine, only then); without ``type``, ``default_type``. None is an empty dict.
        what: The part's name, for error messages.
        default_type: The class built when ``cfg`` has no ``type``.
        registry: The visionattn registry of string types (``MODELS`` or ``TASK_UTILS``).
        given: Arguments the detector fixes (e.g. ``embed_dims``): added to the dict; a dict that sets one to
            another value is an error.
    """
    if isinstance(cfg, nn.Module):
        return cfg
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise TypeError(f'{what} must be a config dict or an nn.Module, got {type(cfg).__name__}')
    kwargs = dict(cfg)
    for key, value in given.items():
        if key in kwargs and not _same(kwargs[key], value):
            raise ValueError(f'{what}: {key}={kwargs[key]!r} contradicts the detector\'s {key}={value!r}; set it '
                             f'on FocusDETR (or leave it out of {what})')
        kwargs[key] = value
    kind = kwargs.pop('type', default_type)
    if isinstance(kind, str):  # a registry name: needs mmengine; task registers the detection classes
        from visionattn.engine import registry as registries

        from . import task  # noqa: F401
        return getattr(registries, registry).build(dict(kwargs, type=kind))
    if not callable(kind):
        raise TypeError(f'{what}["type"] must be a class or a registry name, got {kind!r}')
    return kind(**kwargs)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to at least ``eps`` (detrex's)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def get_sine_pos_embed(pos: torch.Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                       exchange_xy: bool = True) -> torch.Tensor:
    """Sine embedding [..., n * num_pos_feats] of each of the n coordinates of ``pos`` [..., n] (values in [0, 1],
    scaled by 2*pi; interleaved sin/cos); the first two are swapped to (y, x) as DINO does."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode='floor') / num_pos_feats)
    x = pos[..., None].float() * (2 * math.pi) / dim_t  # [..., n, F]
    emb = torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), -1).flatten(-2)  # [..., n, F]
    if exchange_xy and pos.shape[-1] >= 2:
        emb = torch.cat([emb[..., 1:2, :], emb[..., 0:1, :], emb[..., 2:, :]], -2)
    return emb.flatten(-2).to(pos.dtype)


class MaskPredictor(nn.Module):
    """The foreground scorer: LN -> Linear -> GELU, the second half of the channels replaced by its mean over the
    tokens (global context), then Linear/GELU down to h/2, h/4 and one logit per token."""

    def __init__(self, in_dim: int = 256, h_dim: int = 256):
        super().__init__()
        self.h_dim = h_dim
        self.layer1 = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, h_dim), nn.GELU())
        self.layer2 = nn.Sequential(nn.Linear(h_dim, h_dim // 2), nn.GELU(), nn.Linear(h_dim // 2, h_dim // 4),
                                    nn.GELU(), nn.Linear(h_dim // 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layer1(x)
        local, glob = z.split(self.h_dim // 2, dim=-1)
        glob = glob.mean(dim=1, keepdim=True).expand(-1, local.shape[1], -1)
        return self.layer2(torch.cat([local, glob], -1))


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] rows picked by index [B, K] -> [B, K, ...]."""
    idx = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, idx)


def _scatter(x: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Out-of-place: x [B, N, C] with rows index [B, K] replaced by src [B, K, C]."""
    return x.scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), src)


class FocusDETREncoderLayer(nn.Module):
    """One Focus-DETR encoder layer over the selected tokens: dual attention (MHA among the top ``topk_sa`` tokens
    by multi-category score, then ``norm2``) -> deformable attention to the original features -> LN -> FFN -> LN.

    ``attentions.0`` is the MHA, ``attentions.1`` the deformable attention; ``norms`` the two post-norms.
    """

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 2048, num_levels: int = 4,
                 num_points: int = 4, dropout: float = 0.0, topk_sa: int = 300):
        super().__init__()
        self.topk_sa = topk_sa
        self.attentions = nn.ModuleList([
            MultiheadAttention(embed_dims, num_heads, dropout),
            MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points)])
        self.dropout = nn.Dropout(dropout)
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dims, dropout)])
        self.norm2 = nn.LayerNorm(embed_dims)
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims), nn.LayerNorm(embed_dims)])

    def dual_self_attention(self, query: torch.Tensor, pos: torch.Tensor, fg_score: torch.Tensor,
                            class_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MHA among the ``topk_sa`` tokens of highest ``max_c(class_logits) * fg_score`` (both raw logits), then
        ``norm2``; the other tokens come back unchanged. Returns (query, selected indices [B, k])."""
        mc_score = class_logits.max(-1).values * fg_score
        k = min(self.topk_sa, query.shape[1])
        sel = mc_score.topk(k, dim=1).indices
        tgt = self.norm2(self.attentions[0](_gather(query, sel), _gather(pos, sel)))
        return _scatter(query, sel, tgt), sel

    def forward(self, query: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, key_padding_mask: torch.Tensor,
                fg_score: torch.Tensor, class_logits: torch.Tensor) -> torch.Tensor:
        query = self.dual_self_attention(query, pos, fg_score, class_logits)[0]
        query = query + self.dropout(self.attentions[1](query + pos, reference_points, value, spatial_shapes,
                                                        level_start_index, key_padding_mask))
        query = self.norms[0](query)
        query = self.ffns[0](query)
        return self.norms[1](query)


class FocusDETREncoder(nn.Module):
    """The encoder: each layer gathers its selected tokens, runs, and writes back each image's first
    ``focus_token_nums[b]`` of them; unselected tokens keep their values.

    Args:
        num_layers: Encoder layers (= len(cascade_ratios)).
        focus_rho: Fraction of each image's valid tokens kept by the foreground selector.
        cascade_ratios: Per layer fraction of the kept tokens it updates.
        layer_kwargs: :class:`FocusDETREncoderLayer` arguments (``embed_dims``, ``num_heads``, ``ffn_dims``,
            ``num_levels``, ``num_points``, ``dropout``, ``topk_sa``).
    """

    def __init__(self, num_layers: int = 6, focus_rho: float = 0.5,
                 cascade_ratios: Sequence[float] = OFFICIAL_CASCADE_RATIOS, **layer_kwargs):
        super().__init__()
        if len(cascade_ratios) != num_layers:
            raise ValueError(f'cascade_ratios has {len(cascade_ratios)} entries for {num_layers} encoder '
                             'layers: give one keep ratio per encoder layer')
        if not 0 < focus_rho <= 1:
            raise ValueError(f'focus_rho must be in (0, 1], got {focus_rho}')
        self.num_layers = num_layers
        self.focus_rho = focus_rho
        self.cascade_ratios = tuple(float(r) for r in cascade_ratios)
        self.layers = nn.ModuleList(FocusDETREncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def select_tokens(self, fg_logits: torch.Tensor, mask: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Per encoder layer the top ``int(cascade[l] * max_b keep_b)`` token indices, and keep_b =
        ``int(valid_b * rho) + 1``."""
        valid = (~mask).sum(-1)
        focus_token_nums = (valid * self.focus_rho).int() + 1
        top = min(int(focus_token_nums.max()), fg_logits.shape[1])
        score = fg_logits.masked_fill(mask, fg_logits.min())
        # float32 products truncated, as the official float tensor ``cascade_set * foreground_topk``
        counts = (torch.tensor(self.cascade_ratios, dtype=torch.float32) * top).int().tolist()
        counts = [min(max(k, 1), fg_logits.shape[1]) for k in counts]
        return [score.topk(k, dim=1).indices for k in counts], focus_token_nums

    def forward(self, query: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, key_padding_mask: torch.Tensor,
                fg_score: torch.Tensor, foreground_inds: Sequence[torch.Tensor], focus_token_nums: torch.Tensor,
                score_head: nn.Module) -> torch.Tensor:
        """Args:
            query: [B, N, C] flattened neck features (also the deformable attention's value in every layer).
            pos: [B, N, C] position + level embeddings.
            reference_points: [B, N, L, 2] normalised token centres scaled by each level's valid ratio.
            fg_score: [B, N] foreground logits (padding filled with the minimum).
            foreground_inds: Per layer [B, K_l] token indices sorted by descending score.
            focus_token_nums: [B] how many selected tokens each image writes back.
            score_head: The two-stage class head, the multi-category score predictor.
        """
        value = query
        output = query
        batch, tokens, levels, _ = reference_points.shape
        for layer, inds in zip(self.layers, foreground_inds):
            q = _gather(output, inds)
            out = layer(q, _gather(pos, inds), _gather(reference_points.flatten(2), inds).view(batch, -1, levels, 2),
                        value, spatial_shapes, level_start_index, key_padding_mask, torch.gather(fg_score, 1, inds),
                        score_head(q))
            keep = torch.arange(inds.shape[1], device=inds.device)[None] < focus_token_nums[:, None]
            output = _scatter(output, inds, torch.where(keep[..., None], out, q))
        return output


class FocusDETRDecoderLayer(nn.Module):
    """DINO decoder layer: MHA self-attention -> LN -> deformable cross-attention -> LN -> FFN -> LN."""

    def __init__(self, embed_dims: int = 256, num_heads: int = 8, ffn_dims: int = 2048, num_levels: int = 4,
                 num_points: int = 4, dropout: float = 0.0):
        super().__init__()
        self.attentions = nn.ModuleList([
            MultiheadAttention(embed_dims, num_heads, dropout),
            MultiScaleDeformableAttention(embed_dims, num_heads, num_levels, num_points)])
        self.dropout = nn.Dropout(dropout)
        self.ffns = nn.ModuleList([FFN(embed_dims, ffn_dims, dropout)])
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(self, query: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, key_padding_mask: torch.Tensor,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        query = self.norms[0](self.attentions[0](query, pos, attn_mask=attn_mask))
        query = query + self.dropout(self.attentions[1](query + pos, reference_points, memory, spatial_shapes,
                                                        level_start_index, key_padding_mask))
        query = self.norms[1](query)
        return self.norms[2](self.ffns[0](query))


class FocusDETRDecoder(nn.Module):
    """DINO's decoder with iterative box refinement and look-forward-twice.

    Args:
        num_layers: Decoder layers.
        embed_dims: Model width.
        layer_kwargs: :class:`FocusDETRDecoderLayer` arguments (``num_heads``, ``ffn_dims``, ``num_levels``,
            ``num_points``, ``dropout``).
    """

    def __init__(self, num_layers: int = 6, embed_dims: int = 256, **layer_kwargs):
        super().__init__()
        self.num_layers = num_layers
        self.layers = nn.ModuleList(FocusDETRDecoderLayer(embed_dims, **layer_kwargs) for _ in range(num_layers))
        self.ref_point_head = MLP(2 * embed_dims, embed_dims, embed_dims, 2)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor, valid_ratios: torch.Tensor,
                key_padding_mask: torch.Tensor, bbox_embed: Sequence[nn.Module],
                attn_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns the normed states [layers, B, Q, C] and each layer's refined (not detached) boxes
        [layers, B, Q, 4]."""
        output = query
        states, refs = [], []
        ratios = torch.cat([valid_ratios, valid_ratios], -1)[:, None]  # [B, 1, L, 4]
        for i, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, None] * ratios
            pos = self.ref_point_head(get_sine_pos_embed(ref_input[:, :, 0, :], query.shape[-1] // 2))
            output = layer(output, pos, ref_input, memory, spatial_shapes, level_start_index, key_padding_mask,
                           attn_mask)
            new_ref = (bbox_embed[i](output) + inverse_sigmoid(reference_points)).sigmoid()
            reference_points = new_ref.detach()
            states.append(self.norm(output))
            refs.append(new_ref)
        return torch.stack(states), torch.stack(refs)


class FocusDETRTransformer(nn.Module):
    """Flattening, foreground token selection, encoder, two-stage proposals and decoder.

    Args:
        encoder: The encoder (:class:`FocusDETREncoder` or one with its ``select_tokens`` and ``forward``).
        decoder: The decoder (:class:`FocusDETRDecoder` or one with its ``num_layers`` and ``forward``).
        embed_dims: Model width C.
        num_feature_levels: Levels L.
        num_queries: Two-stage proposals / learned content queries.

    Every matrix of the encoder and decoder is re-initialised here (:meth:`init_weights`, the official order).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, embed_dims: int = 256, num_feature_levels: int = 4,
                 num_queries: int = 900):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.alpha = nn.Parameter(torch.empty(num_feature_levels - 1))
        self.num_feature_levels = num_feature_levels
        self.num_queries = num_queries
        self.embed_dims = embed_dims
        self.level_embeds = nn.Parameter(torch.empty(num_feature_levels, embed_dims))
        self.tgt_embed = nn.Embedding(num_queries, embed_dims)
        self.enc_output = nn.Linear(embed_dims, embed_dims)
        self.enc_output_norm = nn.LayerNorm(embed_dims)
        self.enc_mask_predictor = MaskPredictor(embed_dims, embed_dims)
        self.init_weights()

    def init_weights(self) -> None:
        """The official order: alpha U(-0.3, 0.3); Xavier-uniform on every matrix; deformable attention's own
        init; level embeddings N(0, 1)."""
        with torch.no_grad():
            self.alpha.uniform_(-0.3, 0.3)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embeds)

    @staticmethod
    def valid_ratios(mask: torch.Tensor) -> torch.Tensor:
        """[B, 2] (w, h) fraction of the map that is not padding."""
        _, h, w = mask.shape
        return torch.stack([(~mask[:, 0, :]).sum(1).float() / w, (~mask[:, :, 0]).sum(1).float() / h], -1)

    @staticmethod
    def encoder_reference_points(spatial_shapes: Sequence[Tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
        """[B, N, L, 2]: each token's centre normalised by its level's valid extent, then scaled by every level's
        valid ratio (Deformable DETR)."""
        refs = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=valid_ratios.device),
                                    torch.linspace(0.5, w - 0.5, w, device=valid_ratios.device), indexing='ij')
            ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((xs, ys), -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def encoder_output_proposals(self, memory: torch.Tensor, mask: torch.Tensor,
                                 spatial_shapes: Sequence[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-token proposals (centre, wh 0.05 * 2 ** level; inverse-sigmoid, inf where padding or outside
        (0.01, 0.99)) and ``enc_output_norm(enc_output(memory))`` with those tokens zeroed first."""
        batch = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(spatial_shapes):
            m = mask[:, start:start + h * w].view(batch, h, w)
            valid_h, valid_w = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)
            gy, gx = torch.meshgrid(torch.linspace(0, h - 1, h, device=memory.device),
                                    torch.linspace(0, w - 1, w, device=memory.device), indexing='ij')
            grid = torch.stack([gx, gy], -1)
            scale = torch.stack([valid_w, valid_h], -1).view(batch, 1, 1, 2)
            grid = (grid[None].expand(batch, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(batch, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(mask[..., None], float('inf')).masked_fill(~valid, float('inf'))
        out = memory.masked_fill(mask[..., None], 0.0).masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(out)), proposals

    def foreground_scores(self, tokens: torch.Tensor, spatial_shapes: Sequence[Tuple[int, int]],
                          level_start: Sequence[int]) -> torch.Tensor:
        """Top-down scoring [B, N] of the processed tokens, coarsest level first (raw logits)."""
        batch, _, channels = tokens.shape
        num_levels = len(spatial_shapes)
        scores = [None] * num_levels
        prev = None
        for i in range(num_levels):
            lvl = num_levels - 1 - i
            h, w = spatial_shapes[lvl]
            x = tokens[:, level_start[lvl]:level_start[lvl] + h * w]
            if prev is not None:
                up = F.interpolate(prev, (h, w), mode='bilinear', align_corners=True)  # [B, 1, h, w]
                x = x + x * up.flatten(2).transpose(1, 2) * self.alpha[i - 1]
            prev = self.enc_mask_predictor(x).reshape(batch, 1, h, w)
            scores[lvl] = prev.flatten(1)
        return torch.cat(scores, 1)

    def forward(self, feats: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], pos_embeds: Sequence[torch.Tensor],
                class_embed: nn.ModuleList, bbox_embed: nn.ModuleList, dn_label: Optional[torch.Tensor] = None,
                dn_bbox: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None) -> Dict:
        spatial = [tuple(f.shape[-2:]) for f in feats]
        feat_flat = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)
        mask_flat = torch.cat([m.flatten(1) for m in masks], 1)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embeds[i].view(1, 1, -1)
                              for i, p in enumerate(pos_embeds)], 1)
        spatial_shapes = torch.as_tensor(spatial, dtype=torch.long, device=feat_flat.device)
        sizes = [h * w for h, w in spatial]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        level_start_index = torch.as_tensor(starts, dtype=torch.long, device=feat_flat.device)
        valid_ratios = torch.stack([self.valid_ratios(m) for m in masks], 1)  # [B, L, 2]
        reference_points = self.encoder_reference_points(spatial, valid_ratios)

        # foreground token selection
        tokens, _ = self.encoder_output_proposals(feat_flat + pos_flat, mask_flat, spatial)
        fg_logits = self.foreground_scores(tokens, spatial, starts)
        foreground_inds, focus_token_nums = self.encoder.select_tokens(fg_logits, mask_flat)
        fg_score = fg_logits.masked_fill(mask_flat, fg_logits.min())

        score_head = class_embed[self.decoder.num_layers]
        memory = self.encoder(feat_flat, pos_flat, reference_points, spatial_shapes, level_start_index, mask_flat,
                              fg_score, foreground_inds, focus_token_nums, score_head)

        # two-stage proposals
        out_memory, proposals = self.encoder_output_proposals(memory, mask_flat, spatial)
        enc_class = class_embed[self.decoder.num_layers](out_memory)
        enc_coord_unact = bbox_embed[self.decoder.num_layers](out_memory) + proposals
        if out_memory.shape[1] < self.num_queries:
            raise ValueError(f'the input gives {out_memory.shape[1]} tokens, fewer than num_queries='
                             f'{self.num_queries}: use larger images or fewer queries')
        topk = enc_class.max(-1).values.topk(self.num_queries, dim=1).indices
        topk_coords_unact = _gather(enc_coord_unact, topk)
        reference = topk_coords_unact.detach().sigmoid()
        target_unact = _gather(out_memory, topk)
        target = self.tgt_embed.weight[None].expand(feat_flat.shape[0], -1, -1)
        if dn_bbox is not None:
            reference = torch.cat([dn_bbox.sigmoid(), reference], 1)
            target = torch.cat([dn_label, target], 1)
        init_reference = reference
        states, refs = self.decoder(target, memory, reference, spatial_shapes, level_start_index, valid_ratios,
                                    mask_flat, bbox_embed, attn_mask)
        return dict(states=states, init_reference=init_reference, references=refs, enc_state=target_unact,
                    enc_boxes=topk_coords_unact.sigmoid(), foreground_logits=fg_logits, spatial_shapes=spatial_shapes,
                    level_start_index=level_start_index, foreground_inds=foreground_inds,
                    focus_token_nums=focus_token_nums)


def prepare_for_cdn(targets: Sequence[Dict], dn_number: int, label_noise_ratio: float, box_noise_scale: float,
                    num_queries: int, num_classes: int, label_enc: nn.Embedding):
    """DINO's contrastive denoising queries.

    Returns ``(labels [B, P, C], boxes [B, P, 4] inverse-sigmoid, attn_mask [P + Q, P + Q] bool True = blocked,
    dn_meta)`` with P = 2 * groups * max_gt, or None when dn_number is 0 or the batch has no boxes.
    """
    if dn_number <= 0:
        return None
    device = label_enc.weight.device
    known_num = [len(t['labels']) for t in targets]
    max_known = max(known_num, default=0)
    if max_known == 0:
        return None
    groups = max((2 * dn_number) // (2 * max_known), 1)
    labels = torch.cat([t['labels'] for t in targets]).to(device)
    boxes = torch.cat([t['boxes'] for t in targets]).to(device=device, dtype=label_enc.weight.dtype)
    batch_idx = torch.cat([torch.full((n,), i, dtype=torch.long, device=device) for i, n in enumerate(known_num)])
    total = len(boxes)
    known_labels = labels.repeat(2 * groups)
    known_bid = batch_idx.repeat(2 * groups)
    known_boxes = boxes.repeat(2 * groups, 1)
    noised_labels = known_labels.clone()
    if label_noise_ratio > 0:
        p = torch.rand(noised_labels.shape, device=device)
        chosen = torch.nonzero(p < label_noise_ratio * 0.5).view(-1)
        noised_labels[chosen] = torch.randint(0, num_classes, chosen.shape, device=device)
    noised_boxes = known_boxes
    if box_noise_scale > 0:
        # copy c of the boxes sits at [c * total, (c + 1) * total); odd copies are the negatives
        group_start = torch.arange(groups, device=device) * 2 * total
        negative = (torch.arange(total, device=device)[None] + group_start[:, None] + total).flatten()
        xyxy = box_convert(known_boxes, 'cxcywh', 'xyxy')
        diff = torch.cat([known_boxes[:, 2:] / 2, known_boxes[:, 2:] / 2], 1)
        sign = torch.randint(0, 2, known_boxes.shape, device=device).to(known_boxes) * 2.0 - 1.0
        part = torch.rand_like(known_boxes)
        part[negative] += 1.0
        xyxy = (xyxy + part * sign * diff * box_noise_scale).clamp(0.0, 1.0)
        noised_boxes = box_convert(xyxy, 'xyxy', 'cxcywh')
    single_padding = max_known
    pad_size = single_padding * 2 * groups
    batch = len(targets)
    dims = label_enc.weight.shape[1]
    map_idx = torch.cat([torch.arange(n, device=device) for n in known_num])
    map_idx = torch.cat([map_idx + single_padding * i for i in range(2 * groups)])
    input_label = label_enc.weight.new_zeros(batch, pad_size, dims).index_put(
        (known_bid, map_idx), label_enc(noised_labels))
    input_bbox = label_enc.weight.new_zeros(batch, pad_size, 4).index_put(
        (known_bid, map_idx), inverse_sigmoid(noised_boxes))
    size = pad_size + num_queries
    attn_mask = torch.zeros(size, size, dtype=torch.bool, device=device)
    attn_mask[pad_size:, :pad_size] = True
    for i in range(groups):
        start, end = single_padding * 2 * i, single_padding * 2 * (i + 1)
        attn_mask[start:end, end:pad_size] = True
        attn_mask[start:end, :start] = True
    meta = {'single_padding': single_padding * 2, 'dn_num': groups, 'pad_size': pad_size}
    return input_label, input_bbox, attn_mask, meta


class FocusDETR(nn.Module):
    """Focus-DETR on any zoo/timm backbone (ResNet-50 as the paper), composed mmdet style.

    The official R50 starts from torchvision's ImageNet weights: ``backbone='resnet50.tv_in1k', pretrained=True``.
    The neck, encoder, decoder, matcher and criterion are each an ``nn.Module`` or a config dict built by
    :func:`build_part`: ``type`` a class or a visionattn registry name, the default class without it, e.g.
    ``encoder=dict(num_layers=6, focus_rho=0.5, cascade_ratios=(1.0, 0.8, 0.6, 0.6, 0.4, 0.2), topk_sa=300)``.
    The detector fills in what it fixes itself (a dict may repeat it only with the same value): the neck's
    ``in_channels`` (the backbone's), ``out_channels`` (``embed_dims``) and ``num_outs`` (``num_feature_levels``);
    the encoder's and decoder's ``embed_dims`` and ``num_levels``; the criterion's ``num_classes``, ``matcher`` and
    ``num_decoder_layers``. The defaults are the official R50 model.

    Mixed-size batches: an image's predictions depend on the other images of its batch, beyond their shared padding,
    because this class batches as the official code does (kept so that official checkpoints behave as published).
    Every encoder layer updates ``cascade_ratios[l]`` times the LARGEST image's keep count in every image (a smaller
    image updates more tokens than alone), those extra tokens (padding among them) join the token self-attention,
    which has no padding mask, and padding takes the batch's lowest foreground logit; the two-stage top-k may pick
    padding tokens (an image with fewer valid tokens than ``num_queries``, refused alone, runs). A batch of one
    image, or of images of one size, gives each image its result alone (up to float rounding); evaluate that way
    where predictions must not depend on the batch (the COCO configs here, like detrex's, test one image per GPU).

    Args:
        backbone: timm model name (features_only) or a feature module with ``feature_info``.
        num_classes: Foreground classes (80 in the official COCO config).
        pretrained: Load the backbone's pretrained weights.
        neck: The level mapper to ``embed_dims`` (default :class:`~visionattn.layers.ChannelMapper`, 1x1 conv + GN
            per backbone level, 3x3/s2 conv + GN extra levels).
        encoder: The Focus-DETR encoder (default :class:`FocusDETREncoder`: 6 layers, ``focus_rho`` 0.5, the
            official cascade, ``topk_sa`` 300, 8 heads, FFN 2048, 4 points, dropout 0).
        decoder: The DINO decoder (default :class:`FocusDETRDecoder`: 6 layers, 8 heads, FFN 2048, 4 points).
        matcher: The Hungarian matcher of the criterion (default :class:`HungarianMatcher`, costs 2/5/2); only
            with a criterion dict (a criterion module brings its own).
        criterion: The losses (default :class:`FocusDETRCriterion`, weights 1/5/2 and 1.5 for the foreground).
        num_queries: Decoder queries / two-stage proposals.
        embed_dims: Transformer width (divisible by 32 for the GroupNorms and by the heads).
        num_feature_levels: Levels fed to the transformer: the last ``num_backbone_levels`` backbone levels of stride
            >= 8 plus stride-2 extra levels.
        dn_number: Denoising queries budget (groups = dn_number // max_gt).
        label_noise_ratio: Label-flip probability x2 of the denoising queries.
        box_noise_scale: Box-noise scale of the denoising queries.
        num_select: Detections per image at inference.
        backbone_kwargs: Extra ``timm.create_model`` keyword arguments.
        freeze_bn: Turn every BatchNorm of the backbone into a FrozenBatchNorm2d (official R50).
        freeze_at: detectron2's freeze_at for ResNet-style backbones: 0 nothing, 1 the stem (official), k >= 2 also
            ``layer1``..``layer{k-1}``; other backbones are trained in full (as the official Swin configs).
        num_backbone_levels: Backbone levels used (3: strides 8, 16, 32).
    """

    def __init__(self, backbone: Union[str, nn.Module] = 'resnet50', num_classes: int = 80, pretrained: bool = False,
                 neck: PartConfig = None, encoder: PartConfig = None, decoder: PartConfig = None,
                 matcher: PartConfig = None, criterion: PartConfig = None, num_queries: int = 900,
                 embed_dims: int = 256, num_feature_levels: int = 4, dn_number: int = 100,
                 label_noise_ratio: float = 0.5, box_noise_scale: float = 1.0, num_select: int = 300,
                 backbone_kwargs: Optional[Dict] = None, freeze_bn: bool = True, freeze_at: int = 1,
                 num_backbone_levels: int = 3):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        for name, value in (('num_queries', num_queries), ('num_select', num_select)):
            if value < 1:  # else a reshape or top-k error deep in forward/predict
                raise ValueError(f'{name} must be positive, got {value}')
        if isinstance(criterion, nn.Module) and matcher is not None:
            raise ValueError('a criterion module brings its own matcher: give matcher only with a criterion dict')
        self.backbone = FeatureBackbone(backbone, None, pretrained, num_levels=num_backbone_levels, min_reduction=8,
                                        backbone_kwargs=backbone_kwargs)
        if len(self.backbone.channels) > num_feature_levels:
            raise ValueError(f'num_feature_levels={num_feature_levels} is fewer than the {len(self.backbone.channels)} '
                             'backbone levels used')
        if freeze_bn:
            self.backbone.model = freeze_batch_norm_2d(self.backbone.model)
        self._freeze_stages(freeze_at)
        self.pretrained_cfg = self.backbone.pretrained_cfg
        strides = list(self.backbone.strides)
        while len(strides) < num_feature_levels:
            strides.append(strides[-1] * 2)
        self.strides = strides
        self.position_embedding = PositionEmbeddingSine(embed_dims // 2, 10000, True, offset=-0.5)
        # built in the official order (the random initialisation depends on it): neck, encoder, decoder, the rest
        self.neck = build_part(neck, 'neck', ChannelMapper, in_channels=list(self.backbone.channels),
                               out_channels=embed_dims, num_outs=num_feature_levels)
        encoder = build_part(encoder, 'encoder', FocusDETREncoder, embed_dims=embed_dims, num_levels=num_feature_levels)
        decoder = build_part(decoder, 'decoder', FocusDETRDecoder, embed_dims=embed_dims, num_levels=num_feature_levels)
        self.transformer = FocusDETRTransformer(encoder, decoder, embed_dims, num_feature_levels, num_queries)
        self.num_classes, self.num_queries, self.embed_dims = num_classes, num_queries, embed_dims
        self.dn_number, self.label_noise_ratio, self.box_noise_scale = dn_number, label_noise_ratio, box_noise_scale
        self.num_select = num_select

        class_embed = nn.Linear(embed_dims, num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        bbox_embed = MLP(embed_dims, embed_dims, 4, 3)
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        num_pred = decoder.num_layers + 1  # the last pair scores the two-stage proposals
        self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
        self.label_enc = nn.Embedding(num_classes, embed_dims)

        if not isinstance(criterion, nn.Module):
            matcher = build_part(matcher, 'matcher', HungarianMatcher, 'TASK_UTILS')
            criterion = build_part(criterion, 'criterion', FocusDETRCriterion, num_classes=num_classes,
                                   matcher=matcher, num_decoder_layers=decoder.num_layers)
        self.criterion = criterion

    def _freeze_stages(self, freeze_at: int) -> None:
        """detectron2's ``ResNet.freeze``: 1 = the stem (conv1, bn1), k >= 2 also res2..res_k (layer1..layer_k-1).
        Only ResNet-style backbones are frozen; the official Swin configs train the whole backbone."""
        model = self.backbone.model
        if freeze_at < 1 or not (hasattr(model, 'conv1') and hasattr(model, 'bn1') and hasattr(model, 'layer1')):
            return
        names = ['conv1', 'bn1'] + [f'layer{i}' for i in range(1, freeze_at) if hasattr(model, f'layer{i}')]
        for n in names:
            for p in getattr(model, n).parameters():
                p.requires_grad_(False)

    # -- input checks --------------------------------------------------------------------------------------------
    @staticmethod
    def image_sizes_from_mask(pad_mask: torch.Tensor) -> List[Tuple[int, int]]:
        """Each image's unpadded (h, w), checking that the padding is at the bottom and right only."""
        valid = ~pad_mask
        hs, ws = valid.any(2).sum(1), valid.any(1).sum(1)
        rows = torch.arange(pad_mask.shape[1], device=pad_mask.device)
        cols = torch.arange(pad_mask.shape[2], device=pad_mask.device)
        rect = (rows[None, :, None] < hs[:, None, None]) & (cols[None, None, :] < ws[:, None, None])
        if not torch.equal(rect, valid):
            raise ValueError('pad_mask must mark padding at the bottom and right of each image only (True = padding) '
                             'with a top-left rectangle of valid pixels')
        if (hs == 0).any():
            raise ValueError('pad_mask marks a whole image as padding')
        return [(int(h), int(w)) for h, w in zip(hs.tolist(), ws.tolist())]

    def _check_inputs(self, images: torch.Tensor, pad_mask: torch.Tensor, targets: Optional[Sequence[Dict]]) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f'images must be a [B, 3, H, W] tensor, got '
                             f'{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}')
        if not isinstance(pad_mask, torch.Tensor) or pad_mask.dtype != torch.bool:
            raise TypeError('pad_mask must be a bool tensor [B, H, W] (True = padding), got '
                            f'{pad_mask.dtype if isinstance(pad_mask, torch.Tensor) else type(pad_mask).__name__}')
        b, _, h, w = images.shape
        if tuple(pad_mask.shape) != (b, h, w):
            raise ValueError(f'pad_mask shape {tuple(pad_mask.shape)} does not match the images: expected '
                             f'(B, H, W) = {(b, h, w)}')
        if targets is None:
            return
        if not isinstance(targets, (list, tuple)) or len(targets) != b:
            raise ValueError(f'targets must be a list of {b} dicts (one per image), got '
                             f'{len(targets) if isinstance(targets, (list, tuple)) else type(targets).__name__}')
        for i, t in enumerate(targets):
            if not isinstance(t, dict) or 'labels' not in t or 'boxes' not in t:
                raise ValueError(f'targets[{i}] must be a dict with "labels" [n] and "boxes" [n, 4] (cxcywh in [0, 1])')
            labels, boxes = t['labels'], t['boxes']
            if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
                got = f'{getattr(labels, "dtype", type(labels).__name__)} {tuple(getattr(labels, "shape", ()))}'
                raise ValueError(f'targets[{i}]["labels"] must be an integer tensor [n], got {got}')
            if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4 \
                    or len(boxes) != len(labels):
                raise ValueError(f'targets[{i}]["boxes"] must be a float tensor [n={len(labels)}, 4] (cxcywh), got '
                                 f'{tuple(getattr(boxes, "shape", ()))}')
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f'targets[{i}]["labels"] must lie in [0, {self.num_classes}), got '
                                 f'{labels.min().item()}..{labels.max().item()}')
            self._check_boxes(boxes, i)

    @staticmethod
    def _check_boxes(boxes: torch.Tensor, index: int) -> None:
        """Refuse the cxcywh boxes no data set means: a non-finite value (the matcher fails on it), a negative width
        or height (an inverted box: its GIoU loss is unbounded below) and a box with no point in the unit square
        (nothing of it in the image). Boxes partly outside are used as given (the Detector clips pixel boxes to the
        image before normalising, which can still overshoot 1 by a rounding error); zero-size boxes are kept."""
        cx, cy, w, h = boxes.detach().unbind(-1)
        rules = ((~torch.isfinite(boxes).all(-1), 'has a non-finite value'),  # first: NaN fails every comparison
                 ((w < 0) | (h < 0), 'has a negative width or height (an inverted box)'),
                 ((cx + w / 2 < 0) | (cy + h / 2 < 0) | (cx - w / 2 > 1) | (cy - h / 2 > 1),
                  'lies wholly outside the image ([0, 1] after normalising by its unpadded size)'))
        for bad, why in rules:
            if bad.any():
                j = int(bad.nonzero()[0])
                raise ValueError(f'targets[{index}]["boxes"][{j}] = {boxes[j].tolist()} (cx, cy, w, h) {why}')

    # -- network -------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor,
                targets: Optional[Sequence[Dict]] = None) -> Dict:
        """Raw outputs.

        Args:
            images: Normalised, padded images [B, 3, H, W].
            pad_mask: [B, H, W] bool, True at padding (bottom/right).
            targets: Per image ``labels`` long [n] and ``boxes`` [n, 4] cxcywh normalised by the unpadded size;
                denoising queries are added only while training with targets.

        Returns:
            ``pred_logits`` [B, Q, K], ``pred_boxes`` [B, Q, 4] (cxcywh, normalised by the unpadded size),
            ``aux_outputs`` (the earlier decoder layers), ``enc_outputs`` (two-stage proposals), ``dn_outputs``
            (when denoising), ``foreground_logits`` [B, N], ``spatial_shapes``, ``strides``, ``image_sizes``,
            ``foreground_inds`` and ``focus_token_nums``.
        """
        self._check_inputs(images, pad_mask, targets)
        image_sizes = self.image_sizes_from_mask(pad_mask)
        feats = self.neck(self.backbone(images))
        masks = [F.interpolate(pad_mask[None].float(), size=f.shape[-2:]).to(torch.bool)[0] for f in feats]
        pos = [self.position_embedding(m).to(f.dtype) for m, f in zip(masks, feats)]
        dn = None
        if self.training and targets is not None:
            dn = prepare_for_cdn(targets, self.dn_number, self.label_noise_ratio, self.box_noise_scale,
                                 self.num_queries, self.num_classes, self.label_enc)
        dn_label, dn_bbox, attn_mask, dn_meta = dn if dn is not None else (None, None, None, None)
        t = self.transformer(feats, masks, pos, self.class_embed, self.bbox_embed, dn_label, dn_bbox, attn_mask)
        states = t['states'] + self.label_enc.weight[0, 0] * 0.0  # keeps label_enc in the graph (official, for DDP)
        classes, coords = [], []
        for lvl in range(states.shape[0]):
            ref = t['init_reference'] if lvl == 0 else t['references'][lvl - 1]
            classes.append(self.class_embed[lvl](states[lvl]))
            coords.append((self.bbox_embed[lvl](states[lvl]) + inverse_sigmoid(ref)).sigmoid())
        classes, coords = torch.stack(classes), torch.stack(coords)
        out = {}
        if dn_meta is not None:
            pad = dn_meta['pad_size']
            out['dn_outputs'] = {'pred_logits': classes[-1, :, :pad], 'pred_boxes': coords[-1, :, :pad],
                                 'aux_outputs': [{'pred_logits': c, 'pred_boxes': b}
                                                 for c, b in zip(classes[:-1, :, :pad], coords[:-1, :, :pad])],
                                 'dn_meta': dn_meta}
            classes, coords = classes[:, :, pad:], coords[:, :, pad:]
        out.update(pred_logits=classes[-1], pred_boxes=coords[-1],
                   aux_outputs=[{'pred_logits': c, 'pred_boxes': b} for c, b in zip(classes[:-1], coords[:-1])],
                   enc_outputs={'pred_logits': self.class_embed[-1](t['enc_state']), 'pred_boxes': t['enc_boxes']},
                   foreground_logits=t['foreground_logits'], spatial_shapes=t['spatial_shapes'],
                   strides=self.strides, image_sizes=image_sizes, foreground_inds=t['foreground_inds'],
                   focus_token_nums=t['focus_token_nums'])
        return out

    def loss(self, images: torch.Tensor, pad_mask: torch.Tensor, targets: Sequence[Dict]) -> Dict[str, torch.Tensor]:
        """The weighted loss terms (official weights); their sum is the training loss."""
        if targets is None:
            raise ValueError('loss() needs targets: a list of {"labels", "boxes"} dicts, one per image')
        outputs = self(images, pad_mask, targets)
        return self.criterion.weighted(self.criterion(outputs, targets))

    def postprocess(self, outputs: Dict, image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """Top ``num_select`` (query, class) pairs by sigmoid score; boxes xyxy in pixels of each (h, w), clipped."""
        logits, boxes = outputs['pred_logits'], outputs['pred_boxes']
        if len(image_sizes) != logits.shape[0]:
            raise ValueError(f'image_sizes has {len(image_sizes)} entries for {logits.shape[0]} images')
        batch, _, num_classes = logits.shape
        k = min(self.num_select, logits.shape[1] * num_classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
        query, labels = index // num_classes, index % num_classes
        boxes = box_convert(_gather(boxes, query), 'cxcywh', 'xyxy')
        results = []
        for s, lab, b, (h, w) in zip(scores, labels, boxes, image_sizes):
            scale = b.new_tensor([w, h, w, h])
            b = torch.minimum((b * scale).clamp(min=0), scale)
            results.append({'scores': s, 'labels': lab, 'boxes': b})
        return results

    def predict(self, images: torch.Tensor, pad_mask: torch.Tensor,
                image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """Per image ``scores`` [K], ``labels`` long [K] and ``boxes`` [K, 4] xyxy in pixels of ``image_sizes``
        ((h, w) of the unpadded input)."""
        return self.postprocess(self(images, pad_mask), image_sizes)
