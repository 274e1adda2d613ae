"""Focus-DETR (heads/detection): tiny CPU runs, the token selector, the denoising mask, the matcher, the losses, the
official parameter count and the official checkpoint layout."""
import itertools
import math
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.misc import FrozenBatchNorm2d
from visionattn.heads.detection import (
    FOCUS_DETR_R50_PARAMS,
    FocusDETR,
    FocusDETRCriterion,
    FocusDETRDecoder,
    HungarianMatcher,
    convert_focus_detr_official,
    foreground_targets,
    prepare_for_cdn,
)
from visionattn.heads.detection.criterion import default_fg_ranges
from visionattn.heads.detection.focus_detr import FocusDETREncoder, FocusDETREncoderLayer

from visionattn.layers import ChannelMapper

pytestmark = pytest.mark.heads

TINY = dict(num_classes=3, num_queries=20, embed_dims=64, dn_number=4, num_select=10,
            encoder=dict(num_layers=2, ffn_dims=128, cascade_ratios=(1.0, 0.5), topk_sa=16),
            decoder=dict(num_layers=2, ffn_dims=128))


def _tiny(encoder=None, **kw):
    """The tiny model; ``encoder`` entries update TINY's encoder dict."""
    torch.manual_seed(0)
    return FocusDETR('resnet18', **{**TINY, 'encoder': {**TINY['encoder'], **(encoder or {})}, **kw})


def _batch():
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    pad = torch.zeros(2, 64, 96, dtype=torch.bool)
    pad[1, 48:] = True
    pad[1, :, 80:] = True
    targets = [{'labels': torch.tensor([0, 2]), 'boxes': torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.4, 0.5]])},
               {'labels': torch.tensor([1]), 'boxes': torch.tensor([[0.5, 0.5, 0.6, 0.8]])}]
    return images, pad, targets


@pytest.fixture(scope='module')
def tiny():
    return _tiny()


def test_loss_backward_reaches_every_trainable_parameter(tiny):
    images, pad, targets = _batch()
    tiny.train()
    tiny.zero_grad(set_to_none=True)
    losses = tiny.loss(images, pad, targets)
    expected = {f'loss_{n}{s}' for n in ('class', 'bbox', 'giou') for s in ('', '_0', '_enc', '_dn', '_dn_0')}
    assert set(losses) == expected | {'loss_foreground'}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses['loss_class_dn'] > 0
    sum(losses.values()).backward()
    # the official model leaves no trainable parameter unused: label_enc stays in the graph through a 0 * w term,
    # class_embed[-1] serves the proposals and the encoder's multi-category scores, bbox_embed[-1] the proposals.
    # (Some gradients are exactly 0 at initialisation, as in the official model: the zero last layer of bbox_embed
    # stops them reaching its first layers, and timm's zero-init last BN of each block its residual branch.)
    missing = [n for n, p in tiny.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert tiny.transformer.alpha.grad.abs().sum() > 0
    assert tiny.transformer.enc_mask_predictor.layer2[4].weight.grad.abs().sum() > 0
    assert tiny.backbone.model.layer4[1].bn2.weight.grad is None  # FrozenBN: a buffer
    frozen = [n for n, p in tiny.named_parameters() if not p.requires_grad]
    assert frozen == ['backbone.model.conv1.weight']  # detectron2 freeze_at=1: the stem only (bn1 is frozen anyway)
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in tiny.backbone.model.named_modules() if 'bn' in n
               and not n.endswith('act'))


def test_predict_shapes_and_ranges(tiny):
    images, pad, _ = _batch()
    sizes = FocusDETR.image_sizes_from_mask(pad)
    assert sizes == [(64, 96), (48, 80)]
    tiny.eval()
    with torch.no_grad():
        results = tiny.predict(images, pad, sizes)
    assert len(results) == 2
    for r, (h, w) in zip(results, sizes):
        assert r['scores'].shape == (10,) and r['labels'].shape == (10,) and r['boxes'].shape == (10, 4)
        assert r['labels'].dtype == torch.int64 and 0 <= r['labels'].min() and r['labels'].max() < 3
        assert ((0 <= r['scores']) & (r['scores'] <= 1)).all()
        assert (r['scores'][:-1] >= r['scores'][1:]).all()
        b = r['boxes']
        assert (b[:, 0] <= b[:, 2]).all() and (b[:, 1] <= b[:, 3]).all()
        assert b.min() >= 0 and (b[:, 0::2] <= w).all() and (b[:, 1::2] <= h).all()


def test_empty_targets():
    model = _tiny()
    images, pad, targets = _batch()
    model.train()
    one_empty = [targets[0], {'labels': torch.zeros(0, dtype=torch.long), 'boxes': torch.zeros(0, 4)}]
    losses = model.loss(images, pad, one_empty)
    assert all(torch.isfinite(v) for v in losses.values())
    all_empty = [{'labels': torch.zeros(0, dtype=torch.long), 'boxes': torch.zeros(0, 4)}] * 2
    losses = model.loss(images, pad, all_empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses['loss_bbox'] == 0 and losses['loss_class_dn'] == 0 and losses['loss_class'] > 0
    sum(losses.values()).backward()


def test_foreground_selection_follows_the_cascade():
    model = _tiny(encoder=dict(cascade_ratios=(1.0, 0.6), focus_rho=0.5))
    images, pad, _ = _batch()
    model.eval()
    with torch.no_grad():
        out = model(images, pad)
    shapes = out['spatial_shapes'].tolist()
    assert shapes == [[8, 12], [4, 6], [2, 3], [1, 2]]
    valid = torch.tensor([8 * 12 + 4 * 6 + 2 * 3 + 1 * 2, 6 * 10 + 3 * 5 + 2 * 3 + 1 * 2])  # image 1 padded
    keep = (valid * 0.5).int() + 1
    assert out['focus_token_nums'].tolist() == keep.tolist() == [65, 42]
    counts = [inds.shape[1] for inds in out['foreground_inds']]
    # the batch's largest keep count sets every image's count, as officially (see FocusDETR's mixed-size note)
    assert counts == [int(1.0 * 65), int(0.6 * 65)]
    # indices are sorted by descending (padding-filled) foreground score and never repeat
    for inds in out['foreground_inds']:
        assert all(len(set(row.tolist())) == len(row) for row in inds)
    fg = out['foreground_logits'][1]
    assert fg.shape == (sum(h * w for h, w in shapes),)


def test_dual_attention_keeps_unselected_tokens():
    torch.manual_seed(0)
    layer = FocusDETREncoderLayer(embed_dims=32, num_heads=4, ffn_dims=64, num_levels=2, topk_sa=5)
    query, pos = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    fg, logits = torch.randn(2, 12), torch.randn(2, 12, 3)
    out, sel = layer.dual_self_attention(query, pos, fg, logits)
    mc = logits.max(-1).values * fg
    assert torch.equal(sel, mc.topk(5, dim=1).indices)
    for b in range(2):
        chosen = torch.zeros(12, dtype=torch.bool)
        chosen[sel[b]] = True
        assert torch.equal(out[b, ~chosen], query[b, ~chosen])
        assert not torch.allclose(out[b, chosen], query[b, chosen])

    # the encoder writes back only each image's first focus_token_nums[b] selected tokens of each layer
    enc = FocusDETREncoder(2, cascade_ratios=(1.0, 1.0), embed_dims=32, num_heads=4, ffn_dims=64, num_levels=2,
                           topk_sa=3)
    shapes = torch.tensor([[2, 4], [1, 4]])
    start = torch.tensor([0, 8])
    src = torch.randn(2, 12, 32)
    refs = torch.rand(2, 12, 2, 2)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    inds = [torch.tensor([[3, 7, 1, 0, 5], [2, 4, 6, 8, 10]]), torch.tensor([[7, 3, 9], [11, 2, 4]])]
    nums = torch.tensor([5, 2])
    head = torch.nn.Linear(32, 3)
    memory = enc(src, pos, refs, shapes, start, mask, fg, inds, nums, head)
    for b in range(2):
        written = set(inds[0][b, :nums[b]].tolist()) | set(inds[1][b, :nums[b]].tolist())
        untouched = [i for i in range(12) if i not in written]
        assert torch.equal(memory[b, untouched], src[b, untouched])
        assert not torch.allclose(memory[b, sorted(written)], src[b, sorted(written)])


def test_matcher_matches_brute_force():
    torch.manual_seed(0)
    matcher = HungarianMatcher()
    for queries, num_targets in [(4, 3), (5, 2), (3, 3), (4, 1)]:
        outputs = {'pred_logits': torch.randn(2, queries, 3),
                   'pred_boxes': torch.cat([torch.rand(2, queries, 2) * 0.6 + 0.2,
                                            torch.rand(2, queries, 2) * 0.3 + 0.05], -1)}
        targets = [{'labels': torch.randint(0, 3, (n,)),
                    'boxes': torch.cat([torch.rand(n, 2) * 0.6 + 0.2, torch.rand(n, 2) * 0.3 + 0.05], -1)}
                   for n in (num_targets, num_targets - 1)]
        costs = matcher.cost_matrices(outputs, targets)
        for (rows, cols), cost, t in zip(matcher(outputs, targets), costs, targets):
            n = len(t['labels'])
            assert len(rows) == len(cols) == min(queries, n)
            ours = cost[rows, cols].sum().item() if n else 0.0
            best = min((sum(cost[q, j].item() for j, q in enumerate(perm)) for perm in
                        itertools.permutations(range(queries), n)), default=0.0)
            assert ours == pytest.approx(best, abs=1e-5)
    # one cost entry by hand: focal class 2, L1 5, GIoU 2
    logits, box = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    tgt = torch.tensor([[0.5, 0.5, 0.4, 0.2]])
    p = torch.sigmoid(torch.tensor(-1.0))
    focal = 0.25 * (1 - p) ** 2 * -torch.log(p + 1e-8) - 0.75 * p ** 2 * -torch.log(1 - p + 1e-8)
    giou = 0.5  # [0.4, 0.6]^2 inside [0.3, 0.7] x [0.4, 0.6]: IoU 0.5, the hull is the union
    c = matcher.cost_matrices({'pred_logits': logits[None], 'pred_boxes': box[None]},
                              [{'labels': torch.tensor([1]), 'boxes': tgt}])[0]
    assert c.item() == pytest.approx(2 * focal.item() + 5 * 0.2 - 2 * giou, abs=1e-5)


def test_foreground_targets_by_hand():
    # stride 8 on a 4x4 map: centres at 4, 12, 20, 28; the box (4, 4)-(20, 28) strictly contains x = 12, y = 12, 20
    box = torch.tensor([[4.0, 4.0, 20.0, 28.0]])
    labels = foreground_targets([(4, 4)], [8], [box], [(-1, 64)])
    expected = torch.zeros(1, 16)
    expected[0, [1 * 4 + 1, 2 * 4 + 1]] = 1
    assert torch.equal(labels, expected)
    # the same box is too small for the (64, 128] range; a 128 px box is positive everywhere on stride 16 there
    assert foreground_targets([(4, 4)], [8], [box], [(64, 128)]).sum() == 0
    big = torch.tensor([[0.0, 0.0, 128.0, 128.0]])
    both = foreground_targets([(16, 16), (8, 8)], [8, 16], [big], default_fg_ranges(2))
    assert both[0, :256].sum() == 0 and both[0, 256:].sum() == 64
    assert default_fg_ranges(4) == [(-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, float('inf'))]
    assert foreground_targets([(2, 2)], [8], [torch.zeros(0, 4)], [(-1, 64)]).sum() == 0

    # the loss: per-image focal sum over all tokens / max(#positives, 1), mean over images
    model = _tiny()
    crit = model.criterion
    scores = torch.randn(2, 16)
    outputs = {'foreground_logits': scores, 'spatial_shapes': torch.tensor([[4, 4]]), 'strides': [8],
               'image_sizes': [(32, 32), (32, 32)]}
    crit.fg_ranges = [(-1, 64)]
    cxcywh = torch.tensor([[12 / 32, 16 / 32, 16 / 32, 24 / 32]])  # the box above, normalised
    targets = [{'labels': torch.tensor([0]), 'boxes': cxcywh}, {'labels': torch.zeros(0, dtype=torch.long),
                                                               'boxes': torch.zeros(0, 4)}]
    got = crit.foreground_loss(outputs, targets)
    labels = torch.cat([expected, torch.zeros(1, 16)])
    per = sigmoid_focal_loss(scores, labels, 0.25, 2.0).sum(1) / torch.tensor([2.0, 1.0])
    assert got.item() == pytest.approx(per.mean().item(), rel=1e-6)


def test_dn_attention_mask_blocks_groups():
    torch.manual_seed(0)
    enc = torch.nn.Embedding(3, 8)
    targets = [{'labels': torch.tensor([0, 2]), 'boxes': torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.2, 0.4]])},
               {'labels': torch.tensor([1]), 'boxes': torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    labels, boxes, mask, meta = prepare_for_cdn(targets, 4, 0.5, 1.0, num_queries=5, num_classes=3, label_enc=enc)
    assert meta == {'single_padding': 4, 'dn_num': 2, 'pad_size': 8}  # 2 groups of (2 positive + 2 negative)
    assert labels.shape == (2, 8, 8) and boxes.shape == (2, 8, 4) and mask.shape == (13, 13)
    group = lambda i: i // 4 if i < 8 else None  # noqa: E731
    for i in range(13):
        for j in range(13):
            blocked = (group(i) is None and group(j) is not None) or \
                (group(i) is not None and group(j) is not None and group(i) != group(j))
            assert mask[i, j].item() == blocked, (i, j)
    # image 1 has one box: its second slot of each half-group is padding (zero label, zero box logits)
    for slot in (1, 3, 5, 7):
        assert labels[1, slot].abs().sum() == 0 and boxes[1, slot].abs().sum() == 0
    # positives stay within half a side of the box; negatives are pushed further (box noise 1.0)
    assert prepare_for_cdn([{'labels': torch.zeros(0, dtype=torch.long), 'boxes': torch.zeros(0, 4)}], 4, 0.5, 1.0,
                           5, 3, enc) is None


def _official_layout(num_classes=80, embed=256, ffn=2048, heads=8, levels=4, points=4, enc_layers=6, dec_layers=6,
                     queries=900):
    """The official R50 Focus-DETR state dict, name -> (shape, is_parameter, alias_of), written from the official
    modules: detectron2 ResNet-50 (FrozenBN buffers, ``stem``/``res2-5``/``shortcut``), detrex ChannelMapper,
    MultiheadAttention (``attn``), MultiScaleDeformableAttention, FFN (``layers.0.0``/``layers.1``), MLP, and
    Focus-DETR's transformer, MaskPredictor and heads, including the aliased head copies."""
    sd = OrderedDict()

    def p(name, shape, alias=None):
        sd[name] = (tuple(shape), True, alias)

    def frozen_bn(prefix, c):
        for n in ('weight', 'bias', 'running_mean', 'running_var'):
            sd[f'{prefix}.{n}'] = ((c,), False, None)

    def lin(name, o, i, alias=None):
        p(f'{name}.weight', (o, i), alias and f'{alias}.weight')
        p(f'{name}.bias', (o,), alias and f'{alias}.bias')

    def ln(name):
        p(f'{name}.weight', (embed,))
        p(f'{name}.bias', (embed,))

    p('backbone.stem.conv1.weight', (64, 3, 7, 7))
    frozen_bn('backbone.stem.conv1.norm', 64)
    cin = 64
    for s, n in enumerate((3, 4, 6, 3)):
        b, cout = 64 * 2 ** s, 256 * 2 ** s
        for i in range(n):
            pre = f'backbone.res{s + 2}.{i}'
            if i == 0:
                p(f'{pre}.shortcut.weight', (cout, cin, 1, 1))
                frozen_bn(f'{pre}.shortcut.norm', cout)
            for j, shape in enumerate([(b, cin if i == 0 else cout, 1, 1), (b, b, 3, 3), (cout, b, 1, 1)], 1):
                p(f'{pre}.conv{j}.weight', shape)
                frozen_bn(f'{pre}.conv{j}.norm', shape[0])
        cin = cout
    for i, (c, k) in enumerate([(512, 1), (1024, 1), (2048, 1)]):
        p(f'neck.convs.{i}.conv.weight', (embed, c, k, k))
        p(f'neck.convs.{i}.conv.bias', (embed,))
        ln(f'neck.convs.{i}.norm')
    p('neck.extra_convs.0.conv.weight', (embed, 2048, 3, 3))
    p('neck.extra_convs.0.conv.bias', (embed,))
    ln('neck.extra_convs.0.norm')
    t = 'transformer'
    p(f'{t}.alpha', (levels - 1,))
    p(f'{t}.level_embeds', (levels, embed))
    p(f'{t}.tgt_embed.weight', (queries, embed))
    lin(f'{t}.enc_output', embed, embed)
    ln(f'{t}.enc_output_norm')
    ln(f'{t}.enc_mask_predictor.layer1.0')
    lin(f'{t}.enc_mask_predictor.layer1.1', embed, embed)
    lin(f'{t}.enc_mask_predictor.layer2.0', embed // 2, embed)
    lin(f'{t}.enc_mask_predictor.layer2.2', embed // 4, embed // 2)
    lin(f'{t}.enc_mask_predictor.layer2.4', 1, embed // 4)

    def layer(pre, norms):
        p(f'{pre}.attentions.0.attn.in_proj_weight', (3 * embed, embed))
        p(f'{pre}.attentions.0.attn.in_proj_bias', (3 * embed,))
        lin(f'{pre}.attentions.0.attn.out_proj', embed, embed)
        lin(f'{pre}.attentions.1.sampling_offsets', heads * levels * points * 2, embed)
        lin(f'{pre}.attentions.1.attention_weights', heads * levels * points, embed)
        lin(f'{pre}.attentions.1.value_proj', embed, embed)
        lin(f'{pre}.attentions.1.output_proj', embed, embed)
        lin(f'{pre}.ffns.0.layers.0.0', ffn, embed)
        lin(f'{pre}.ffns.0.layers.1', embed, ffn)
        for j in range(norms):
            ln(f'{pre}.norms.{j}')

    for i in range(enc_layers):
        layer(f'{t}.encoder.layers.{i}', 2)
        ln(f'{t}.encoder.layers.{i}.norm2')
    for i in range(dec_layers):
        layer(f'{t}.decoder.layers.{i}', 3)
    lin(f'{t}.decoder.ref_point_head.layers.0', embed, 2 * embed)
    lin(f'{t}.decoder.ref_point_head.layers.1', embed, embed)
    ln(f'{t}.decoder.norm')
    for i in range(dec_layers + 1):
        lin(f'class_embed.{i}', num_classes, embed)
        for j, o in enumerate((embed, embed, 4)):
            lin(f'bbox_embed.{i}.layers.{j}', o, embed)
    p('label_enc.weight', (num_classes, embed))
    for i in range(dec_layers + 1):  # aliases registered a second (and third) time by the official model
        lin(f'{t}.decoder.class_embed.{i}', num_classes, embed, f'class_embed.{i}')
        for j, o in enumerate((embed, embed, 4)):
            lin(f'{t}.decoder.bbox_embed.{i}.layers.{j}', o, embed, f'bbox_embed.{i}.layers.{j}')
    for i in range(enc_layers):
        lin(f'{t}.encoder.enhance_MCSP.{i}', num_classes, embed, f'class_embed.{dec_layers}')
        lin(f'enhance_MCSP_layerlist.{i}', num_classes, embed, f'class_embed.{dec_layers}')
    return sd


def _official_param_count(layout):
    return sum(math.prod(shape) for shape, is_param, alias in layout.values() if is_param and alias is None)


@pytest.mark.parametrize('num_classes', [80, 91])
def test_official_parameter_count(num_classes):
    with torch.device('meta'):
        model = FocusDETR('resnet50', num_classes=num_classes)
    ours = sum(p.numel() for p in model.parameters())
    official = _official_param_count(_official_layout(num_classes))
    assert ours == official == FOCUS_DETR_R50_PARAMS[num_classes]
    stem = 64 * 3 * 7 * 7
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == official - stem
    if num_classes == 80:
        assert official == 49_339_920


def test_convert_official_checkpoint_loads_strictly():
    layout = _official_layout(80)
    official = {k: torch.empty(shape, device='meta') for k, (shape, _, _) in layout.items()}
    converted = convert_focus_detr_official({'model': official, 'iteration': 89999})
    assert not any(k.startswith(('transformer.decoder.class_embed', 'transformer.encoder.enhance_MCSP',
                                 'enhance_MCSP_layerlist')) for k in converted)
    assert converted.keys() == convert_focus_detr_official(official).keys()
    with torch.device('meta'):
        model = FocusDETR('resnet50', num_classes=80)
    result = model.load_state_dict(converted, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert convert_focus_detr_official({'backbone.res4.5.conv2.norm.running_var': 1}) == \
        {'backbone.model.layer3.5.bn2.running_var': 1}
    assert convert_focus_detr_official({'module.backbone.res2.0.shortcut.norm.bias': 1}) == \
        {'backbone.model.layer1.0.downsample.1.bias': 1}


def test_bad_inputs_name_the_problem(tiny):
    images, pad, targets = _batch()
    with pytest.raises(ValueError, match='pad_mask shape'):
        tiny(images, pad[:, :32])
    with pytest.raises(TypeError, match='pad_mask must be a bool'):
        tiny(images, pad.float())
    odd = torch.zeros_like(pad)
    odd[0, 0, 0] = True
    with pytest.raises(ValueError, match='bottom and right'):
        tiny(images, odd)
    with pytest.raises(ValueError, match='list of 2 dicts'):
        tiny.loss(images, pad, targets[:1])
    with pytest.raises(ValueError, match=r'targets\[1\]\["boxes"\]'):
        tiny.loss(images, pad, [targets[0], {'labels': torch.tensor([0]), 'boxes': torch.zeros(1, 2)}])
    with pytest.raises(ValueError, match=r'targets\[0\]\["labels"\] must lie in'):
        tiny.loss(images, pad, [{'labels': torch.tensor([3]), 'boxes': torch.rand(1, 4)}, targets[1]])
    with pytest.raises(ValueError, match='dict with "labels"'):
        tiny.loss(images, pad, [targets[0], {'boxes': torch.rand(1, 4)}])
    with pytest.raises(ValueError, match='fewer than num_queries'):
        _tiny(num_queries=200)(images, pad)
    with pytest.raises(ValueError, match='cascade_ratios'):
        _tiny(encoder=dict(cascade_ratios=(1.0,)))
    with pytest.raises(ValueError, match='divisible by 32'):
        _tiny(embed_dims=48)


@pytest.mark.parametrize('name, value', [('num_queries', 0), ('num_select', 0), ('num_select', -1)])
def test_query_and_selection_counts_must_be_positive(name, value):
    # else forward fails in a reshape ("cannot reshape tensor of 0 elements") and predict in top-k ("selected index k
    # out of range"), naming neither argument
    with pytest.raises(ValueError, match=f'{name} must be positive, got {value}'):
        _tiny(**{name: value})


@pytest.mark.parametrize('box, why', [
    ([0.5, 0.5, -0.2, 0.3], 'negative width or height'),  # an inverted box: GIoU unbounded below
    ([float('nan'), 0.5, 0.2, 0.2], 'non-finite'),  # once scipy's 'matrix contains invalid numeric entries'
    ([0.5, 0.5, float('inf'), 0.2], 'non-finite'),
    ([1.5, 0.5, 0.2, 0.2], 'wholly outside'),
    ([0.5, -0.3, 0.2, 0.2], 'wholly outside'),
])
def test_bad_target_boxes_name_the_image_and_box(tiny, box, why):
    images, pad, targets = _batch()
    bad = {'labels': torch.tensor([1, 0]), 'boxes': torch.tensor([[0.5, 0.5, 0.6, 0.8], box])}
    with pytest.raises(ValueError, match=rf'targets\[1\]\["boxes"\]\[1\] = \[.*\] \(cx, cy, w, h\) .*{why}'):
        tiny.loss(images, pad, [targets[0], bad])


def test_target_boxes_partly_outside_or_empty_are_kept(tiny):
    images, pad, targets = _batch()
    edge = {'labels': torch.tensor([1, 2]), 'boxes': torch.tensor([[0.95, 0.5, 0.2, 0.4], [0.5, 0.5, 0.0, 0.0]])}
    tiny._check_inputs(images, pad, [targets[0], edge])


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parts_compose_from_dicts_and_modules():
    default = _tiny()
    assert isinstance(default.neck, ChannelMapper) and isinstance(default.transformer.decoder, FocusDETRDecoder)
    assert default.criterion.matcher.cost_class == 2.0 and default.criterion.weight_dict['loss_foreground'] == 1.5
    # the explicit official dicts are the defaults, parameter for parameter
    explicit = _tiny(encoder=dict(type=FocusDETREncoder, focus_rho=0.5, num_heads=8, num_points=4, dropout=0.0),
                     neck=dict(type=ChannelMapper, kernel_size=1, num_groups=32),
                     matcher=dict(type=HungarianMatcher, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0),
                     criterion=dict(type=FocusDETRCriterion, class_weight=1.0, bbox_weight=5.0, giou_weight=2.0,
                                    foreground_weight=1.5))
    assert _same_state(default, explicit) and repr(default) == repr(explicit)
    swapped = _tiny(matcher=dict(cost_class=1.0), criterion=dict(foreground_weight=3.0, giou_weight=1.0))
    assert swapped.criterion.matcher.cost_class == 1.0 and swapped.criterion.weight_dict['loss_foreground'] == 3.0
    assert swapped.criterion.weight_dict['loss_giou_dn_0'] == 1.0
    # modules are used as they are (the transformer re-initialises the encoder's and decoder's matrices)
    encoder = FocusDETREncoder(2, cascade_ratios=(1.0, 0.5), embed_dims=64, ffn_dims=128, num_levels=4, topk_sa=16)
    decoder = FocusDETRDecoder(2, 64, ffn_dims=128, num_levels=4)
    criterion = FocusDETRCriterion(3, HungarianMatcher(1.0, 5.0, 2.0), num_decoder_layers=2)
    built = FocusDETR('resnet18', **{**TINY, 'encoder': encoder, 'decoder': decoder, 'criterion': criterion})
    assert built.transformer.encoder is encoder and built.transformer.decoder is decoder
    assert built.criterion is criterion and len(built.class_embed) == 3
    assert list(built.state_dict()) == list(default.state_dict())
    images, pad, targets = _batch()
    assert set(built.loss(images, pad, targets)) == set(default.loss(images, pad, targets))


def test_part_configs_name_their_problems():
    with pytest.raises(ValueError, match='neck: out_channels=32 contradicts the detector\'s out_channels=64'):
        _tiny(neck=dict(out_channels=32))
    with pytest.raises(ValueError, match='encoder: embed_dims=32 contradicts'):
        _tiny(encoder=dict(embed_dims=32))
    with pytest.raises(ValueError, match='brings its own matcher'):
        _tiny(matcher=dict(cost_class=1.0), criterion=FocusDETRCriterion(3))
    with pytest.raises(TypeError, match='decoder must be a config dict or an nn.Module'):
        _tiny(decoder=[2])
    with pytest.raises(TypeError, match='unexpected keyword'):
        _tiny(num_encoder_layers=2)  # the flat keywords are gone: the encoder dict has num_layers


def test_parts_by_registry_name():
    pytest.importorskip('mmengine')
    named = _tiny(encoder=dict(type='FocusDETREncoder'), decoder=dict(type='FocusDETRDecoder', num_layers=2,
                                                                      ffn_dims=128),
                  neck=dict(type='ChannelMapper'), matcher=dict(type='HungarianMatcher', cost_class=2.0),
                  criterion=dict(type='FocusDETRCriterion'))
    assert _same_state(named, _tiny())
