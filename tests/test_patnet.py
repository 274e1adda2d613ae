"""PATNet: the partial layers against their definitions, the checkpoint conversion, bad input, and a dense head."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from visionattn.backbones.patnet import checkpoint_filter_fn

import visionattn
from visionattn.hub import CheckpointMismatchError
from visionattn.layers import (
    EuclideanRelPosSelfAttention2d,
    GaussianChannelAttention,
    PartialChannelAttention,
    PartialConv,
    PartialSelfAttention,
    PartialSpatialAttention,
    partial,
)
from visionattn.layers.partial import euclidean_rpe_index, patnet_rel_bias

pytestmark = pytest.mark.backbones

PATNETS = visionattn.list_models('patnet*')  # the registry, not a hand list
BIG_PARAMS = 50e6  # variants above this run their forward passes under the `slow` marker, as in test_backbones


def _by_size(names):
    return [pytest.param(n, marks=pytest.mark.slow) if visionattn.paper_facts(n).reference_params > BIG_PARAMS
            else n for n in names]


def _randomise_norms(module):
    """Non-trivial BatchNorm/LayerNorm affine parameters and running statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def _bn_eval(x, bn):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def _hardsigmoid(x):
    return (x / 6 + 0.5).clamp(0, 1)


def test_partial_conv_leaves_untouched_channels():
    torch.manual_seed(0)
    layer = PartialConv(12, n_div=4).double()
    x = torch.randn(2, 12, 5, 7, dtype=torch.double)
    out = layer(x)
    assert layer.dim_conv == 3 and layer.dim_untouched == 9
    torch.testing.assert_close(out[:, 3:], x[:, 3:], rtol=0, atol=0)
    torch.testing.assert_close(out[:, :3], F.conv2d(x[:, :3], layer.conv.weight, padding=1))


def test_gaussian_channel_attention_matches_definition():
    torch.manual_seed(0)
    layer = GaussianChannelAttention(6).double().eval()
    _randomise_norms(layer)
    x = torch.randn(3, 6, 4, 5, dtype=torch.double)
    flat = x.reshape(3, 6, -1)
    mean, std = flat.mean(-1), flat.std(-1, unbiased=True)  # the paper's mean and (unbiased) std pooling
    weight = layer.fc.weight  # C, C, 1, 2: column 0 reads the mean, column 1 the std
    z = mean @ weight[:, :, 0, 0].T + std @ weight[:, :, 0, 1].T
    gate = _hardsigmoid(_bn_eval(z, layer.bn))
    torch.testing.assert_close(layer(x), x * gate[:, :, None, None])


def test_gaussian_channel_attention_batch_of_one_in_training_uses_running_stats():
    torch.manual_seed(0)
    layer = GaussianChannelAttention(6)
    _randomise_norms(layer)
    running = layer.bn.running_mean.clone()
    x = torch.randn(1, 6, 4, 4)
    out_train = layer.train()(x)
    torch.testing.assert_close(layer.bn.running_mean, running)
    torch.testing.assert_close(out_train, layer.eval()(x))
    # two samples use batch statistics and update the running mean
    layer.train()(torch.randn(2, 6, 4, 4))
    assert not torch.equal(layer.bn.running_mean, running)


def test_frozen_or_eval_batchnorms_keep_their_statistics_in_a_training_model():
    # Adversarial probe: the channel attention's BatchNorm followed the attention module's mode, not its own: with the
    # BatchNorms set to eval in a training model (mmdet's norm_eval) it still used batch statistics and updated its
    # running ones (22 buffers of patnet_t0), and timm's freeze_batch_norm_2d made it fail (no momentum).
    from timm.layers import freeze_batch_norm_2d
    torch.manual_seed(0)
    model = timm.create_model('patnet_t0').eval()  # (PAT_sf's dropouts off: the comparison below is exact)
    _randomise_norms(model)
    for module in model.modules():
        if isinstance(module, GaussianChannelAttention):  # a training layer whose BatchNorm is in eval
            module.train()
            module.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(x))  # the same as the model in eval
        frozen = freeze_batch_norm_2d(model)
        for module in frozen.modules():
            if isinstance(module, GaussianChannelAttention):
                module.train()  # with a FrozenBatchNorm2d
        torch.testing.assert_close(frozen(x), out, atol=1e-5, rtol=1e-5)


def test_gaussian_channel_attention_refuses_single_position():
    with pytest.raises(ValueError, match='at least 2'):
        GaussianChannelAttention(4).eval()(torch.randn(2, 4, 1, 1))


def test_partial_channel_attention_splits_channels():
    torch.manual_seed(0)
    layer = PartialChannelAttention(16, n_div=4).double().eval()
    _randomise_norms(layer)
    x = torch.randn(2, 16, 6, 6, dtype=torch.double)
    out = layer(x)
    torch.testing.assert_close(out[:, :4], F.conv2d(x[:, :4], layer.conv.weight, padding=1))
    torch.testing.assert_close(out[:, 4:], _bn_eval(layer.attn(x[:, 4:]), layer.norm))


@pytest.mark.parametrize('channels_last', [False, True])
def test_partial_channel_attention_inference_fold_equals_the_layers(channels_last):
    # Without autograd an eval-mode PAT_ch folds BN(x * gate) into x * (gate * scale) + shift, written into the
    # output's channels (issue 27): the same values as the layers it replaces, in the input's layout.
    torch.manual_seed(0)
    layer = PartialChannelAttention(32, n_div=4).double().eval()
    _randomise_norms(layer)
    x = torch.randn(2, 32, 5, 7, dtype=torch.double)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    expected = layer(x)  # grad mode on: the plain layers
    with torch.no_grad():
        folded = layer(x)
    torch.testing.assert_close(folded, expected)
    assert folded.is_contiguous(memory_format=torch.channels_last) == channels_last
    # an fx trace, even without autograd, keeps the plain layers: its graph then runs with gradients too
    with torch.no_grad():
        traced = torch.fx.symbolic_trace(layer)
    leaf = x.detach().clone().requires_grad_()
    traced(leaf).sum().backward()
    torch.testing.assert_close(traced(x), expected)
    # the fold reads the BatchNorm's current statistics and parameters (changed in place, one through .data)
    layer.norm.running_var.mul_(2)
    layer.norm.bias.data.add_(0.5)
    expected = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)


def test_partial_spatial_attention_matches_definition():
    torch.manual_seed(0)
    layer = PartialSpatialAttention(10).double().eval()
    _randomise_norms(layer)
    x = torch.randn(2, 10, 3, 4, dtype=torch.double)
    gated, mixed = x[:, :5], x[:, 5:]
    gate = _hardsigmoid(torch.einsum('oc,bchw->bohw', layer.gate_conv.weight[:, :, 0, 0], gated))  # one map
    expected_gated = _bn_eval(gated * gate, layer.gated_norm)
    expected_mixed = torch.einsum('oc,bchw->bohw', layer.conv.weight[:, :, 0, 0], _bn_eval(mixed, layer.conv_norm))
    torch.testing.assert_close(layer(x), torch.cat((expected_gated, expected_mixed), 1))


def _bucket_by_hand(q, k, width, alpha, beta, gamma):
    d = round(math.dist(divmod(q, width), divmod(k, width)))
    if d > alpha:
        d = min(round(alpha + math.log(d / alpha) / math.log(gamma / alpha) * (beta - alpha)), beta)
    return int(d) + int(beta)


@pytest.mark.parametrize('height, width, alpha, beta, gamma', [(3, 5, 20., 40., 160.), (9, 13, 2., 4., 16.)])
def test_euclidean_rpe_index(height, width, alpha, beta, gamma):
    index = euclidean_rpe_index(height, width, alpha, beta, gamma)
    length = height * width
    expected = torch.tensor([[_bucket_by_hand(q, k, width, alpha, beta, gamma) for k in range(length)]
                             for q in range(length)])
    torch.testing.assert_close(index, expected)
    assert index.min() >= int(beta) and index.max() <= 2 * int(beta)


def test_rel_pos_self_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    layer = EuclideanRelPosSelfAttention2d(12, num_heads=3, rpe_ratio=1.).double().eval()
    with torch.no_grad():
        layer.rpe_table.normal_()
    x = torch.randn(2, 12, 4, 5, dtype=torch.double)
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = layer.qkv(tokens).reshape(2, 20, 3, 3, 4).permute(2, 0, 3, 1, 4)
    bias = torch.stack([layer.rpe_table[h][euclidean_rpe_index(4, 5, 1., 2., 8.)] for h in range(3)])
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4) + bias, dim=-1)
    expected = layer.proj((attn @ v).transpose(1, 2).reshape(2, 20, 12)).transpose(1, 2).reshape(2, 12, 4, 5)
    torch.testing.assert_close(layer(x), expected)
    layer.fused_attn = not layer.fused_attn  # the other path (fused SDPA vs. manual) agrees too
    torch.testing.assert_close(layer(x), expected)


def test_rel_pos_bias_gets_gradient():
    layer = EuclideanRelPosSelfAttention2d(8, num_heads=2)
    layer(torch.randn(2, 8, 3, 3)).square().sum().backward()
    assert layer.rpe_table.grad is not None and layer.rpe_table.grad.abs().sum() > 0


def _plain_rel_pos_bias(table, height, width, alpha, beta, gamma):
    """The bias as it was before issue 27: plain indexing of the table, with a batch dimension of 1."""
    return table[:, euclidean_rpe_index(height, width, alpha, beta, gamma, device=table.device)].unsqueeze(0)


@pytest.mark.parametrize('index', [euclidean_rpe_index(3, 5, 2., 4., 16.), torch.tensor([[8, 0], [8, 8], [3, 5]])])
def test_rel_bias_op_is_the_indexing(index):
    """Issue 27's custom op: the values and gradients of ``table[:, index]``, as a new contiguous tensor."""
    torch.manual_seed(0)
    table = torch.randn(3, 9, dtype=torch.double, requires_grad=True)
    out = patnet_rel_bias(table, index)
    expected = table[:, index]
    assert out.shape == (3, *index.shape) and out.is_contiguous() and out.dtype == table.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grad = torch.randn_like(out)
    got, = torch.autograd.grad(out, table, grad)
    want, = torch.autograd.grad(expected, table, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # fp32 too: index_add sums each entry's gradient in the indexing's own order
    table32 = table.detach().float().requires_grad_()
    grad32 = grad.float().permute(1, 2, 0).contiguous().permute(2, 0, 1)  # heads-last, as inductor may hand it over
    got, = torch.autograd.grad(patnet_rel_bias(table32, index), table32, grad32)
    want, = torch.autograd.grad(table32[:, index], table32, grad32)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: patnet_rel_bias(t, index), (table,))
    torch.library.opcheck(patnet_rel_bias, (table, index))  # schema, fake tensor, autograd registration


@pytest.mark.parametrize('fused', [True, False])
def test_rel_bias_op_leaves_the_model_exact(monkeypatch, fused):
    """The custom op and the 3-D bias give bit for bit the outputs and gradients of the plain indexing (fp32, CPU)."""
    torch.manual_seed(0)
    model = timm.create_model('patnet_t0', num_classes=5).eval()  # eval: no dropout; gradients flow all the same
    _randomise_norms(model)
    with torch.no_grad():
        for block in model.stages[3].blocks:
            block.spatial_mixing.attn.rpe_table.normal_()
    for m in model.modules():
        if isinstance(m, EuclideanRelPosSelfAttention2d):
            m.fused_attn = fused
    x, target = torch.randn(2, 3, 96, 64), torch.tensor([0, 3])

    def step():
        model.zero_grad()
        out = model(x)
        F.cross_entropy(out, target).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grads = step()
    with monkeypatch.context() as m:
        m.setattr(partial, '_rel_pos_bias', _plain_rel_pos_bias)
        expected_out, expected_grads = step()
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0, msg=name)


def test_rpe_index_is_built_once_per_map_size_and_trains_after_inference():
    # The bucket table is cached per (map size, device); a first call under inference_mode must not leave an
    # inference tensor that a later training step saves for its backward.
    partial._cached_rpe_index.cache_clear()
    model = timm.create_model('patnet_t0', num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        model.eval()(x)
    misses = partial._cached_rpe_index.cache_info().misses
    F.cross_entropy(model.train()(x), torch.tensor([0, 1])).backward()
    assert partial._cached_rpe_index.cache_info().misses == misses  # the training step reused the table
    assert all(m.rpe_table.grad is not None for m in model.modules() if isinstance(m, EuclideanRelPosSelfAttention2d))
    cached = partial._cached_rpe_index(2, 2, 20., 40., 160., torch.device('cpu'))
    assert not cached.is_inference() and torch.equal(cached, partial.euclidean_rpe_index(2, 2, 20., 40., 160.))


def test_compiles_a_tiny_patnet_training_step_like_eager():
    """Issue 27 on CPU: torch.compile through a channels-last training step of a tiny PATNet gives eager's gradients;
    the graph gathers the bias with the custom op and hands SDPA a 3-D contiguous bias, so there is no dense 4-D bias
    that inductor's channels-last layout optimisation could lay out heads-last (what broke CUDA's SDPA backward).

    Backend aot_eager (AOTAutograd's joint graph, decompositions and partitioner: where the custom op's fake and
    autograd registrations are used) keeps it in seconds; inductor on CPU is the slow test below (cold: ~50 s here).
    """
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = timm.create_model('patnet_t0', embed_dim=8, depths=(1, 1, 1, 1), feature_dim=16, num_classes=5)
    model = model.train().to(memory_format=torch.channels_last)
    with torch.no_grad():
        model.stages[3].blocks[0].spatial_mixing.attn.rpe_table.normal_()
    for m in model.modules():  # no dropout, so eager and compiled see the same step
        if isinstance(m, EuclideanRelPosSelfAttention2d):
            m.attn_drop = 0.
        elif isinstance(m, nn.Dropout):
            m.p = 0.
    x, target = torch.randn(2, 3, 96, 96).contiguous(memory_format=torch.channels_last), torch.tensor([0, 3])
    masks = []

    def backend(gm, example_inputs):
        for node in gm.graph.find_nodes(op='call_function', target=F.scaled_dot_product_attention):
            masks.append(node.kwargs['attn_mask'].meta['example_value'])
        assert 'patnet_rel_bias' in str(gm.graph)
        return torch._dynamo.lookup_backend('aot_eager')(gm, example_inputs)

    def step(fn):
        model.zero_grad()
        F.cross_entropy(fn(x), target).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    state = {k: v.clone() for k, v in model.state_dict().items()}  # the BatchNorm running stats move in each step
    expected = step(model)
    model.load_state_dict(state)
    got = step(torch.compile(model, backend=backend))
    assert masks and all(m.shape == (4, 9, 9) and m.is_contiguous() for m in masks)
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.isfinite(got[name]).all(), name
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert got['stages.3.blocks.0.spatial_mixing.attn.rpe_table'].abs().sum() > 0


def test_partial_self_attention_residual_parts():
    torch.manual_seed(0)
    layer = PartialSelfAttention(16, n_div=4, num_heads=4).eval()
    x = torch.randn(2, 16, 3, 3)
    out = layer(x)
    torch.testing.assert_close(out[:, :4], F.conv2d(x[:, :4], layer.conv.weight, padding=1))
    torch.testing.assert_close(out[:, 4:], layer.attn(layer.norm(x[:, 4:])))


def test_layers_refuse_bad_arguments():
    with pytest.raises(ValueError, match='do not divide'):
        EuclideanRelPosSelfAttention2d(10, num_heads=3)
    with pytest.raises(ValueError, match='expects an input of shape'):
        EuclideanRelPosSelfAttention2d(8, num_heads=2)(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match='odd kernel_size'):
        PartialConv(8, kernel_size=2)
    with pytest.raises(ValueError, match='n_div'):
        PartialConv(3, n_div=4)


@pytest.mark.parametrize('name', PATNETS)
def test_parameter_count_equals_official(name):
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == visionattn.paper_facts(name).reference_params


def test_variant_blocks():
    t1 = timm.create_model('patnet_t1', device='meta')
    t2 = timm.create_model('patnet_t2', device='meta')
    assert all(isinstance(b.mlp[-1], PartialSpatialAttention) for s in t1.stages for b in s.blocks)
    assert not any(isinstance(m, PartialSpatialAttention) for m in t2.modules())
    for model in (t1, t2):
        assert [type(s.blocks[0].spatial_mixing) for s in model.stages] == [PartialChannelAttention] * 3 + [
            PartialSelfAttention]
    assert t2.stages[3].blocks[0].spatial_mixing.attn.num_heads == 4


@pytest.mark.parametrize('shape, message', [
    ((2, 1, 64, 64), r'PATNet expects images of shape \[batch, 3, height, width\]'),
    ((3, 64, 64), r'PATNet expects images of shape \[batch, 3, height, width\]'),
    ((2, 3, 31, 64), 'at least 32x32'),
])
def test_bad_input(shape, message):
    model = timm.create_model('patnet_t0').eval()
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))
    with pytest.raises(ValueError, match=message):
        model.forward_intermediates(torch.randn(shape))


def test_no_pretrained_weights():
    assert timm.get_pretrained_cfg('patnet_t2').url == ''
    with pytest.raises(RuntimeError, match='no pretrained weights'):
        timm.create_model('patnet_t2', pretrained=True)


def _to_official_layout(state_dict):
    """This layout -> PartialNet's (stages interleaved with merges, its module names), written independently."""
    renames = [('.spatial_mixing.conv.', '.spatial_mixing.partial_conv3.'), ('.attn.fc.', '.attn.cfc1.'),
               ('.attn.rpe_table', '.attn.rpe_k.lookup_table_bias'), ('.mlp.4.gate_conv.', '.mlp.4.conv_attn.'),
               ('.mlp.4.gated_norm.', '.mlp.4.norm.'), ('.mlp.4.conv_norm.', '.mlp.4.norm2.')]
    out = {}
    for key, value in state_dict.items():
        parts = key.split('.')
        if parts[0] == 'stages':
            stage = int(parts[1])
            if parts[2] == 'downsample':
                key = '.'.join(['stages', str(2 * stage - 1)] + parts[3:])
            else:
                key = '.'.join(['stages', str(2 * stage)] + parts[2:])
            for new, old in renames:
                key = key.replace(new, old)
        key = key.replace('conv_head.', 'avgpool_pre_head.1.').replace('classifier.', 'head.')
        out['model.' + key] = value
    return {'state_dict': out, 'epoch': 299, 'global_step': 1}


def test_official_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model('patnet_t1').eval()  # has PAT_ch, PAT_sp and PAT_sf
    _randomise_norms(source)
    with torch.no_grad():
        for block in source.stages[3].blocks:
            block.spatial_mixing.attn.rpe_table.normal_()
    path = tmp_path / 'partialnet_t1.ckpt'
    torch.save(_to_official_layout(source.state_dict()), path)
    loaded = timm.create_model('patnet_t1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    # this layout passes through unchanged
    assert checkpoint_filter_fn(source.state_dict(), source).keys() == source.state_dict().keys()


def test_wrong_checkpoint_names_the_keys(tmp_path):
    checkpoint = _to_official_layout(timm.create_model('patnet_t0').state_dict())
    path = tmp_path / 'partialnet_t0.ckpt'
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointMismatchError, match='shape mismatches'):
        timm.create_model('patnet_t1', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


class _TinySegHead(nn.Module):
    """1×1 conv per level to a common width, upsample to the finest level and sum, 1×1 conv to classes."""

    def __init__(self, channels, num_classes, width=16):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, features, size):
        finest = features[0].shape[-2:]
        fused = sum(F.interpolate(conv(f), size=finest, mode='bilinear', align_corners=False)
                    for conv, f in zip(self.lateral, features))
        return F.interpolate(self.classify(fused), size=size, mode='bilinear', align_corners=False)


def test_features_only_feeds_a_segmentation_head():
    torch.manual_seed(0)
    backbone = timm.create_model('patnet_t2', features_only=True)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    assert backbone.feature_info.channels() == [64, 128, 256, 512]
    head = _TinySegHead(backbone.feature_info.channels(), num_classes=5)
    images, labels = torch.randn(2, 3, 64, 96), torch.randint(0, 5, (2, 64, 96))
    logits = head(backbone(images), images.shape[-2:])
    assert logits.shape == (2, 5, 64, 96)
    F.cross_entropy(logits, labels).backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f'no gradient reaches {missing}'


def test_registry_has_every_variant():
    assert PATNETS == sorted(['patnet_t0', 'patnet_t1', 'patnet_t2', 'patnet_s', 'patnet_m', 'patnet_l'])


@pytest.mark.parametrize('name', _by_size(PATNETS))
def test_head_follows_timm_classifier_contract(name):
    """timm's FasterNet contract: the 1×1 conv head is pre-logits, so ``reset_classifier(0)`` keeps it."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    assert model.num_features == model.feature_info[-1]['num_chs'] == model.conv_head.in_channels
    assert model.head_hidden_size == model.conv_head.out_channels == model.classifier.in_features == 1280
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 2, 2)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)
        torch.testing.assert_close(model.classifier(pre_logits), model(x), rtol=0, atol=0)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.head_hidden_size == 1280
        torch.testing.assert_close(model(x), pre_logits, rtol=0, atol=0)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), pre_logits, rtol=0, atol=0)
        model.reset_classifier(0, '')  # no pooling: the conv head runs on the map
        assert model(x).shape == (2, model.head_hidden_size, 2, 2)
        model.reset_classifier(7, 'avg')
        assert model(x).shape == (2, 7) and model.classifier.in_features == model.head_hidden_size
        # created without a classifier: the same widths and the same pre-logits
        headless = timm.create_model(name, num_classes=0).eval()
        headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith('classifier.')})
        assert (headless.num_features, headless.head_hidden_size) == (model.num_features, model.head_hidden_size)
        torch.testing.assert_close(headless(x), pre_logits, rtol=0, atol=0)


def test_head_refuses_pooling_that_changes_width():
    with pytest.raises(ValueError, match='changes the pooled width'):
        timm.create_model('patnet_t0', global_pool='catavgmax')


@pytest.mark.parametrize('prune_head', [True, False])
def test_pruned_head_widths(prune_head):
    """Pruning drops the conv head with the classifier (timm FasterNet): both widths are then the last tap's."""
    model = timm.create_model('patnet_t0').eval()
    x = torch.randn(2, 3, 64, 64)
    model.prune_intermediate_layers([3] if not prune_head else [1], prune_head=prune_head)
    if not prune_head:  # keeps every stage and the head
        assert (model.num_features, model.head_hidden_size) == (256, 1280)
        return
    assert model.num_features == model.head_hidden_size == model.feature_info[1]['num_chs'] == 64
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x))
        model.reset_classifier(0, 'avg')
        assert model(x).shape == (2, model.head_hidden_size)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)


def test_pruned_trunk_takes_a_pooling_that_changes_width():
    """Without its conv head a pruned PATNet is a plain trunk: 'catavgmax' doubles the pooled width, and the classifier
    and head_hidden_size follow it (the classifier kept the trunk's width and failed at the first forward, in a
    matmul "2x256 and 128x5"); back to 'avg', both are the trunk's width again."""
    model = timm.create_model('patnet_t0').eval()
    x = torch.randn(2, 3, 64, 64)
    model.prune_intermediate_layers([2])
    with torch.no_grad():
        features = model.forward_features(x)
        model.reset_classifier(0, 'catavgmax')
        pre_logits = model(x)
        assert pre_logits.shape == (2, 256) and model.head_hidden_size == 256 and model.num_features == 128
        torch.testing.assert_close(pre_logits, torch.cat([features.mean((2, 3)), features.amax((2, 3))], 1))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5) and model.classifier.in_features == 256
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), pre_logits)
        model.reset_classifier(5, 'avg')
        assert model(x).shape == (2, 5) and model.classifier.in_features == model.head_hidden_size == 128
    with pytest.raises(ValueError, match='changes the pooled width'):  # the unpruned head still refuses it
        timm.create_model('patnet_t0').reset_classifier(5, 'catavgmax')


@pytest.mark.slow
def test_compiles_for_a_training_step():
    """torch.compile (inductor, CPU) through a channels-last training step: forward, backward, every gradient.

    Issue 27's ``(*bias): last dimension must be contiguous`` came from CUDA's memory-efficient SDPA kernel; it
    does not reproduce on CPU, so this guards the CPU compile path only (the CUDA test below covers it).
    """
    torch.manual_seed(0)
    model = timm.create_model('patnet_t0', num_classes=5).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model)
    F.cross_entropy(compiled(x), torch.tensor([0, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f'no finite gradient for {missing}'


@pytest.mark.cuda
def test_compiles_for_a_bf16_training_step_cuda():
    """Issue 27: patnet_t2 under torch.compile, bf16 autocast and channels-last failed at its first backward with
    ``(*bias): last dimension must be contiguous`` (H100, torch 2.11): inductor made the gathered (1, heads, L, L) bias
    heads-last (channels-last layout optimisation) and SDPA's backward refused the padded view. The bias is now a 3-D
    tensor from the ``visionattn::patnet_rel_bias`` custom op (passed on an H100, 2026-12-06)."""
    torch.manual_seed(0)
    model = timm.create_model('patnet_t2', num_classes=10).cuda().train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 224, 224, device='cuda').contiguous(memory_format=torch.channels_last)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = F.cross_entropy(torch.compile(model)(x), torch.arange(4, device='cuda'))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert torch.isfinite(loss) and not missing, f'no finite gradient for {missing}'
    assert model.stages[-1].blocks[0].spatial_mixing.attn.rpe_table.grad.abs().sum() > 0


def test_activation_by_name():
    # timm's models take act_layer='gelu'; PATNet failed with "'str' object is not callable" in its first block.
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    by_class = timm.create_model('patnet_t0', act_layer=nn.ReLU).eval()
    torch.manual_seed(0)
    by_name = timm.create_model('patnet_t0', act_layer='relu').eval()
    assert isinstance(by_name.act, nn.ReLU)
    with torch.no_grad():
        torch.testing.assert_close(by_name(x), by_class(x), rtol=0, atol=0)
