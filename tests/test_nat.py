"""NAT / DiNAT: the attention layer against brute-force masked attention, the model against the official forward
written out from its checkpoint, official-layout checkpoints served over loopback HTTP, dilation schedules,
small inputs, parameter counts and FLOPs, and bad-input errors.

The official model (SHI-Labs/Neighborhood-Attention-Transformer classification/nat.py, NATTEN 0.14's
NeighborhoodAttention2D) is re-derived here from its definition, independently of visionattn's modules:
``official_forward`` runs it functionally from a state dict in the official key layout.
"""
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn  # noqa: F401
from visionattn.hub import CheckpointMismatchError
from visionattn.layers import NeighborhoodAttention2d
from visionattn.profile import measure
from visionattn.zoo import paper_facts

pytestmark = pytest.mark.backbones

NAT_NAMES = ['nat_mini', 'nat_tiny', 'nat_small', 'nat_base']
DINAT_NAMES = ['dinat_mini', 'dinat_tiny', 'dinat_small', 'dinat_base', 'dinat_large', 'dinat_large_384']

# The official constructors (classification/nat.py, dinat.py @d334f5b): depths, heads, dim, mlp ratio, kernel,
# layer scale, dilations.
_D224 = [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
OFFICIAL = {
    'nat_mini': ((3, 4, 6, 5), (2, 4, 8, 16), 64, 3, 7, None, None),
    'nat_tiny': ((3, 4, 18, 5), (2, 4, 8, 16), 64, 3, 7, None, None),
    'nat_small': ((3, 4, 18, 5), (3, 6, 12, 24), 96, 2, 7, 1e-5, None),
    'nat_base': ((3, 4, 18, 5), (4, 8, 16, 32), 128, 2, 7, 1e-5, None),
    'dinat_mini': ((3, 4, 6, 5), (2, 4, 8, 16), 64, 3, 7, None, [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]),
    'dinat_tiny': ((3, 4, 18, 5), (2, 4, 8, 16), 64, 3, 7, None, _D224),
    'dinat_small': ((3, 4, 18, 5), (3, 6, 12, 24), 96, 2, 7, None, _D224),
    'dinat_base': ((3, 4, 18, 5), (4, 8, 16, 32), 128, 2, 7, 1e-5, _D224),
    'dinat_large': ((3, 4, 18, 5), (6, 12, 24, 48), 192, 2, 7, None, _D224),
    'dinat_large_384': ((3, 4, 18, 5), (6, 12, 24, 48), 192, 2, 7, None,
                        [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]),
}
# Test-only: NAT-Mini with NAT-S/B's layer scale, to exercise gamma1/2 at a fraction of NAT-S's cost.
OFFICIAL['nat_mini_layer_scale'] = OFFICIAL['nat_mini'][:5] + (1e-5, None)


# ---------------------------------------------------------------------------------------------------------------
# The official definitions, written out
# ---------------------------------------------------------------------------------------------------------------

def _axis_windows(length, kernel, dilation):
    """NATTEN's clamped windows on one axis: allowed[query, key] and rpb offset (key - query) / dilation + k - 1."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    offset = torch.zeros(length, length, dtype=torch.long)
    for i in range(length):
        group, pos = i % dilation, i // dilation
        group_len = len(range(group, length, dilation))
        start = min(max(pos - kernel // 2, 0), group_len - kernel)
        for j in range(start, start + kernel):
            allowed[i, group + dilation * j] = True
            offset[i, group + dilation * j] = j - pos + kernel - 1
    return allowed, offset


def brute_force_na(q, k, v, kernel, dilation, rpb, scale):
    """Dense attention [B, H, W, heads, d] masked to each query's neighbourhood, rpb added to the scaled logits."""
    batch, height, width, heads, dim = q.shape
    n = height * width
    allowed_y, offset_y = _axis_windows(height, kernel, dilation)
    allowed_x, offset_x = _axis_windows(width, kernel, dilation)
    # [qy, qx, ky, kx] -> [query, key]
    mask = (allowed_y[:, None, :, None] & allowed_x[None, :, None, :]).reshape(n, n)
    bias = 0
    if rpb is not None:
        bias = rpb[:, offset_y[:, None, :, None], offset_x[None, :, None, :]].reshape(heads, n, n)
    qf, kf, vf = (t.reshape(batch, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    logits = (qf * scale) @ kf.transpose(-1, -2) + bias
    attn = logits.masked_fill(~mask, float('-inf')).softmax(-1)
    return (attn @ vf).transpose(1, 2).reshape(batch, height, width, heads, -1)


def official_attention(x, sd, prefix, heads, kernel, dilation):
    """NATTEN 0.14 NeighborhoodAttention2D.forward: zero-pad x bottom/right to kernel*dilation, qkv, NA, crop, proj."""
    batch, height, width, dim = x.shape
    window = kernel * dilation
    if height < window or width < window:
        x = F.pad(x, (0, 0, 0, max(0, window - width), 0, max(0, window - height)))
    qkv = F.linear(x, sd[prefix + 'qkv.weight'], sd[prefix + 'qkv.bias'])
    q, k, v = qkv.reshape(*x.shape[:3], 3, heads, dim // heads).unbind(3)
    out = brute_force_na(q, k, v, kernel, dilation, sd[prefix + 'rpb'], (dim // heads) ** -0.5)
    out = out.reshape(*x.shape[:3], dim)[:, :height, :width]
    return F.linear(out, sd[prefix + 'proj.weight'], sd[prefix + 'proj.bias'])


def _ln(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + 'weight'], sd[prefix + 'bias'])


def official_forward(sd, name, x):
    """classification/nat.py NAT.forward, evaluated from a state dict in the official key layout."""
    depths, heads, _, _, kernel, layer_scale, dilations = OFFICIAL[name]
    x = F.conv2d(x, sd['patch_embed.proj.0.weight'], sd['patch_embed.proj.0.bias'], stride=2, padding=1)
    x = F.conv2d(x, sd['patch_embed.proj.1.weight'], sd['patch_embed.proj.1.bias'], stride=2, padding=1)
    x = _ln(x.permute(0, 2, 3, 1), sd, 'patch_embed.norm.')
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f'levels.{i}.blocks.{j}.'
            d = 1 if dilations is None else dilations[i][j]
            a = official_attention(_ln(x, sd, p + 'norm1.'), sd, p + 'attn.', heads[i], kernel, d)
            x = x + (sd[p + 'gamma1'] * a if layer_scale else a)
            h = F.gelu(F.linear(_ln(x, sd, p + 'norm2.'), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
            m = F.linear(h, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
            x = x + (sd[p + 'gamma2'] * m if layer_scale else m)
        if i < len(depths) - 1:
            p = f'levels.{i}.downsample.'
            x = F.conv2d(x.permute(0, 3, 1, 2), sd[p + 'reduction.weight'], stride=2, padding=1).permute(0, 2, 3, 1)
            x = _ln(x, sd, p + 'norm.')
    x = _ln(x, sd, 'norm.').mean((1, 2))
    return F.linear(x, sd['head.weight'], sd['head.bias'])


def official_keys(name, num_classes=1000):
    """Every key and shape of the official classification checkpoint (its module tree, written out)."""
    depths, heads, dim, mlp_ratio, kernel, layer_scale, _ = OFFICIAL[name]
    keys = {'patch_embed.proj.0.weight': (dim // 2, 3, 3, 3), 'patch_embed.proj.0.bias': (dim // 2,),
            'patch_embed.proj.1.weight': (dim, dim // 2, 3, 3), 'patch_embed.proj.1.bias': (dim,),
            'patch_embed.norm.weight': (dim,), 'patch_embed.norm.bias': (dim,)}
    for i, depth in enumerate(depths):
        c, hidden = dim * 2 ** i, int(dim * 2 ** i * mlp_ratio)
        for j in range(depth):
            p = f'levels.{i}.blocks.{j}.'
            keys.update({
                p + 'norm1.weight': (c,), p + 'norm1.bias': (c,),
                p + 'attn.qkv.weight': (3 * c, c), p + 'attn.qkv.bias': (3 * c,),
                p + 'attn.rpb': (heads[i], 2 * kernel - 1, 2 * kernel - 1),
                p + 'attn.proj.weight': (c, c), p + 'attn.proj.bias': (c,),
                p + 'norm2.weight': (c,), p + 'norm2.bias': (c,),
                p + 'mlp.fc1.weight': (hidden, c), p + 'mlp.fc1.bias': (hidden,),
                p + 'mlp.fc2.weight': (c, hidden), p + 'mlp.fc2.bias': (c,)})
            if layer_scale:
                keys.update({p + 'gamma1': (c,), p + 'gamma2': (c,)})
        if i < len(depths) - 1:
            p = f'levels.{i}.downsample.'
            keys.update({p + 'reduction.weight': (2 * c, c, 3, 3), p + 'norm.weight': (2 * c,),
                         p + 'norm.bias': (2 * c,)})
    c = dim * 2 ** (len(depths) - 1)
    keys.update({'norm.weight': (c,), 'norm.bias': (c,), 'head.weight': (num_classes, c),
                 'head.bias': (num_classes,)})
    return keys


def official_checkpoint(name, seed=0):
    """A random checkpoint in the official layout (a bare state dict), with non-trivial norms and layer scales."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in official_keys(name).items():
        t = torch.randn(shape, generator=gen) * (0.05 if len(shape) > 1 else 0.02)
        if key.endswith(('norm.weight', 'norm1.weight', 'norm2.weight')):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key.endswith(('gamma1', 'gamma2')):
            t = 0.5 + 0.1 * torch.randn(shape, generator=gen)
        sd[key] = t
    return sd


# ---------------------------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('size, kernel, dilation', [((7, 9), 3, 1), ((9, 11), 3, 2), ((8, 10), 5, 1), ((9, 8), 4, 2)])
def test_layer_matches_brute_force(size, kernel, dilation):
    torch.manual_seed(0)
    layer = NeighborhoodAttention2d(24, 3, kernel_size=kernel, dilation=dilation).double()
    with torch.no_grad():
        layer.rpb.normal_(0, 1)  # large enough that a mis-indexed bias shows
    x = torch.randn(2, *size, 24, dtype=torch.float64)
    expected = official_attention(x, {k: v for k, v in layer.state_dict().items()}, '', 3, kernel, dilation)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize('size, kernel, dilation', [((5, 6), 3, 2), ((2, 3), 7, 1), ((4, 16), 7, 2), ((1, 1), 3, 1)])
def test_layer_pads_small_inputs_as_natten_014(size, kernel, dilation):
    """Maps smaller than kernel*dilation: zero-padded input of qkv, attention over the padded map, cropped."""
    torch.manual_seed(1)
    layer = NeighborhoodAttention2d(16, 2, kernel_size=kernel, dilation=dilation).double()
    with torch.no_grad():
        layer.qkv.bias.normal_()  # the padded tokens' q/k/v equal this bias
    x = torch.randn(1, *size, 16, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, official_attention(x, dict(layer.state_dict()), '', 2, kernel, dilation))
    out.sum().backward()
    assert layer.qkv.bias.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_layer_fx_trace_and_no_bias():
    torch.manual_seed(2)
    layer = NeighborhoodAttention2d(16, 4, kernel_size=3, qkv_bias=False, rel_pos_bias=False).eval()
    assert layer.rpb is None
    x = torch.randn(1, 2, 5, 16)  # padded: 2 rows < 3
    traced = torch.fx.symbolic_trace(layer)
    torch.testing.assert_close(traced(x), layer(x))
    sd = dict(layer.state_dict(), **{'qkv.bias': torch.zeros(48), 'rpb': None})
    torch.testing.assert_close(layer(x), official_attention(x, sd, '', 4, 3, 1))


def test_layer_bad_input():
    layer = NeighborhoodAttention2d(16, 2, kernel_size=3)
    with pytest.raises(ValueError, match=r'\[batch, height, width, 16\], got shape \(1, 16, 8, 8\)'):
        layer(torch.randn(1, 16, 8, 8))
    with pytest.raises(ValueError, match='channels-last'):
        layer(torch.randn(8, 8, 16))
    with pytest.raises(ValueError, match='empty feature map'):
        layer(torch.randn(1, 0, 8, 16))
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        NeighborhoodAttention2d(10, 3)
    with pytest.raises(ValueError, match='kernel_size must be an int >= 2'):
        NeighborhoodAttention2d(16, 2, kernel_size=1)
    with pytest.raises(ValueError, match='dilation must be an int >= 1'):
        NeighborhoodAttention2d(16, 2, dilation=0)
    with pytest.raises(ValueError, match='attn_drop'):
        NeighborhoodAttention2d(16, 2, attn_drop=0.1)


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name, size', [('nat_mini_layer_scale', (48, 40)), ('dinat_mini', (64, 80))])
def test_model_matches_official_forward(name, size):
    """Official-layout weights in our model give the official forward's logits (layer scale, dilation, padding)."""
    sd = official_checkpoint(name)
    if name == 'nat_mini_layer_scale':
        model = timm.create_model('nat_mini', layer_scale=1e-5).eval()
    else:
        model = timm.create_model(name).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(sd, name, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', NAT_NAMES + DINAT_NAMES)
def test_architecture_equals_official(name):
    """Key for key and shape for shape the official checkpoint; dilations as dinat.py; kernel*dilation fits."""
    model = timm.create_model(name, device='meta')
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_keys(name)
    depths, _, _, _, kernel, _, dilations = OFFICIAL[name]
    got = [[blk.attn.dilation for blk in level.blocks] for level in model.levels]
    assert got == (dilations or [[1] * d for d in depths])
    width = model.pretrained_cfg['input_size'][-1] // 4
    for i, level in enumerate(got):  # at the training resolution no attention map needs padding
        assert max(level) * kernel <= width // 2 ** i
    assert all(blk.attn.kernel_size == kernel for level in model.levels for blk in level.blocks)


def _official_param_count(name):
    """classification/nat.py's parameters, layer by layer (independent of the model and of official_keys)."""
    depths, heads, dim, mlp_ratio, kernel, layer_scale, _ = OFFICIAL[name]
    n = 3 * (dim // 2) * 9 + dim // 2 + (dim // 2) * dim * 9 + dim + 2 * dim
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = dim * 2 ** i
        hidden = int(c * mlp_ratio)
        per_block = 4 * c + 4 * c * c + 4 * c + h * (2 * kernel - 1) ** 2 + 2 * c * hidden + hidden + c
        n += depth * (per_block + (2 * c if layer_scale else 0))
        if i < len(depths) - 1:
            n += 18 * c * c + 4 * c
    c = dim * 2 ** (len(depths) - 1)
    return n + 2 * c + 1000 * c + 1000


FAST_FLOPS = ['nat_mini', 'dinat_mini']


@pytest.mark.parametrize('name', [n if n in FAST_FLOPS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in NAT_NAMES + DINAT_NAMES])
def test_params_and_flops_match_papers(name):
    facts = paper_facts(name)
    measured = measure(name)
    assert measured.params == facts.reference_params == _official_param_count(name)
    assert abs(measured.params / 1e6 - facts.params_m) / facts.params_m < 0.02  # tables print whole millions
    assert abs(measured.gmacs - facts.gflops) / facts.gflops < 0.05, (measured.gmacs, facts.gflops)


def test_features_only_are_normed_levels_before_downsampling():
    torch.manual_seed(4)
    model = timm.create_model('nat_mini').eval()
    features = timm.create_model('nat_mini', features_only=True).eval()
    features.model.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith(('head.', 'norm.'))}, strict=False)
    assert features.feature_info.channels() == [64, 128, 256, 512]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = features(x)
        raw = model.forward_intermediates(x, intermediates_only=True)  # no feature norms: raw level outputs
    for out, r in zip(outs, raw):
        nhwc = r.permute(0, 2, 3, 1)
        torch.testing.assert_close(out, F.layer_norm(nhwc, nhwc.shape[-1:]).permute(0, 3, 1, 2))
    assert [o.shape[-2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    # Before downsampling: the last level's map is not the classifier's features, the first is the stem's size.
    with torch.no_grad():
        final, _ = model.forward_intermediates(x, indices=[0])
        torch.testing.assert_close(final, model.forward_features(x))
        only_two = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True, output_fmt='NHWC')
    assert [o.shape[-1] for o in only_two] == [64, 512]


def test_intermediate_and_config_errors():
    model = timm.create_model('nat_mini')
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r'indices=\[4\]: feature index 4 is out of range'):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match=r'indices=5: last-n \(5\) is out of range'):
        model.forward_intermediates(x, indices=5)
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC'"):
        model.forward_intermediates(x, output_fmt='NLC')
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        model.reset_classifier(10, 'max')
    with pytest.raises(ValueError, match='got 2 dilations'):
        timm.create_model('nat_mini', dilations=[[1, 2], [1] * 4, [1] * 6, [1] * 5], device='meta')
    with pytest.raises(ValueError, match='4 levels .* but 3 num_heads'):
        timm.create_model('nat_mini', num_heads=(2, 4, 8), device='meta')
    with pytest.raises(ValueError, match='NAT expects images of shape'):
        model(torch.randn(3, 32))


def test_tiny_and_odd_inputs_run():
    model = timm.create_model('dinat_mini', num_classes=5).eval()
    with torch.no_grad():
        for size in ((1, 1), (17, 33)):
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 5) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints through visionattn.hub, served from a loopback HTTP server
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def served(weight_server):
    def serve(checkpoint, file_name):
        torch.save(checkpoint, weight_server.root / file_name)
        return weight_server.url(file_name)
    return serve


def test_official_checkpoint_loads_strictly(served):
    sd = official_checkpoint('nat_mini')
    url = served(sd, 'nat_mini.pth')  # the official file is a bare state dict
    model = timm.create_model('nat_mini', pretrained=True, pretrained_cfg_overlay=dict(url=url)).eval()
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(x), official_forward(sd, 'nat_mini', x), rtol=1e-4, atol=1e-4)

    # features_only: the per-level norms start as the official dense-prediction code starts them (fresh LN).
    features = timm.create_model('nat_mini', pretrained=True, features_only=True,
                                 pretrained_cfg_overlay=dict(url=url)).eval()
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and not n.bias.any()
               for n in features.model.feature_norms)
    torch.testing.assert_close(features.model.levels[2].blocks[1].attn.rpb, sd['levels.2.blocks.1.attn.rpb'])

    # A wrapped checkpoint with the dense-prediction backbone's trained per-level norms (norm0..norm3).
    wrapped = {'model': dict(sd, **{f'norm{i}.{p}': torch.full((64 * 2 ** i,), 0.5) for i in range(4)
                                    for p in ('weight', 'bias')})}
    url = served(wrapped, 'with_norms.pth')
    features = timm.create_model('nat_mini', pretrained=True, features_only=True, pretrained_cfg_overlay=dict(url=url))
    assert torch.equal(features.model.feature_norms[3].bias, torch.full((512,), 0.5))


def test_mismatched_checkpoint_names_the_keys(served):
    url = served(official_checkpoint('nat_mini_layer_scale'), 'nat_mini.pth')
    with pytest.raises(CheckpointMismatchError) as err:  # weights with layer scale (as NAT-S) for a model without
        timm.create_model('dinat_mini', pretrained=True, pretrained_cfg_overlay=dict(url=url))
    message = str(err.value)
    assert 'unexpected keys (36)' in message and 'levels.0.blocks.0.gamma1' in message
    assert 'missing keys' not in message


def test_default_cfgs_point_at_the_official_files():
    expected = {
        'nat_tiny.in1k': 'https://shi-labs.com/projects/nat/checkpoints/CLS/nat_tiny.pth',
        'dinat_base.in1k': 'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_base_in1k_224.pth',
        'dinat_large_384.in22k_ft_in1k':
            'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384.pth',
    }
    for name, url in expected.items():
        assert timm.models.get_pretrained_cfg(name).url == url
    assert len(visionattn.list_models('*nat*', pretrained=True)) == 10
    cfg = timm.models.get_pretrained_cfg('dinat_large_384')
    assert cfg.input_size == (3, 384, 384) and cfg.pool_size == (12, 12) and math.isclose(cfg.crop_pct, 1.0)


def test_bad_image_shapes_are_named():
    # Issue 21: a 3-D input (an image without its batch axis) failed inside a permute.
    model = timm.create_model('nat_mini', num_classes=0).eval()
    for bad in (torch.randn(3, 64, 64), torch.randn(1, 4, 64, 64)):
        with pytest.raises(ValueError, match=r'NAT expects images of shape \[batch, 3, height, width\]'):
            model(bad)
        with pytest.raises(ValueError, match='NAT expects images'):
            model.forward_intermediates(bad)
