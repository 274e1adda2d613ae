"""BiFormer: BRA against the official math, official checkpoints end to end, padding, aliases and bad inputs.

The official model is rebuilt here module for module with the official parameter names (rayleizhu/BiFormer
@1697bbb: models/biformer.py, models/_common.py, ops/bra_legacy.py), and its forward is a direct transcription of
the official computation: a per-region loop over the gathered top-k regions, not the op under test. Its
``state_dict`` is therefore a checkpoint in the official layout, and its parameter count is the official one.
No test touches the internet: checkpoints are served from a loopback HTTP server.
"""
import argparse
import functools
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import visionattn
from visionattn.hub import CheckpointMismatchError
from visionattn.layers import BiLevelRoutingAttention
from visionattn.profile import measure
from visionattn.zoo import paper_facts

pytestmark = pytest.mark.backbones

VARIANTS = {  # official models/biformer.py
    'biformer_t': dict(depth=(2, 2, 8, 2), embed_dim=(64, 128, 256, 512)),
    'biformer_s': dict(depth=(4, 4, 18, 4), embed_dim=(64, 128, 256, 512)),
    'biformer_b': dict(depth=(4, 4, 18, 4), embed_dim=(96, 192, 384, 768)),
}


# ---------------------------------------------------------------------------------------------------------------
# The official computation, transcribed
# ---------------------------------------------------------------------------------------------------------------

def official_bra_math(x, qkv_weight, qkv_bias, lepe, wo, qk_dim, num_heads, n_win, topk, auto_pad=True):
    """ops/bra_legacy.py BiLevelRoutingAttention.forward (kv_downsample 'identity', hard routing), region by region.

    Returns the NHWC output and the routing index [B, n_win², topk].
    """
    batch, h_in, w_in, dim = x.shape
    if auto_pad:
        x = F.pad(x, (0, 0, 0, (n_win - w_in % n_win) % n_win, 0, (n_win - h_in % n_win) % n_win))
    height, width = x.shape[1:3]
    rh, rw = height // n_win, width // n_win
    qkv = F.linear(x, qkv_weight, qkv_bias)
    q, k, v = qkv[..., :qk_dim], qkv[..., qk_dim:2 * qk_dim], qkv[..., 2 * qk_dim:]

    def region(t, r):  # tokens of region r (row-major over the region grid), row-major inside it
        j, i = divmod(r, n_win)
        return t[:, j * rh:(j + 1) * rh, i * rw:(i + 1) * rw].reshape(batch, rh * rw, t.shape[-1])

    regions = n_win * n_win
    scale = qk_dim ** -0.5  # the official quirk: the full qk dim
    q_win = torch.stack([region(q, r).mean(1) for r in range(regions)], 1)  # [B, R, qk]
    k_win = torch.stack([region(k, r).mean(1) for r in range(regions)], 1)
    route = torch.topk((q_win * scale) @ k_win.transpose(-2, -1), topk, dim=-1).indices  # [B, R, topk]
    out = torch.zeros(batch, height, width, dim, dtype=x.dtype)
    for b in range(batch):
        for r in range(regions):
            keys = torch.cat([region(k, s)[b] for s in route[b, r].tolist()])  # [topk·T, qk]
            values = torch.cat([region(v, s)[b] for s in route[b, r].tolist()])  # [topk·T, dim]
            query = region(q, r)[b]
            heads = []
            for m in range(num_heads):
                qs, vs = slice(m * qk_dim // num_heads, (m + 1) * qk_dim // num_heads), \
                    slice(m * dim // num_heads, (m + 1) * dim // num_heads)
                weights = torch.softmax((query[:, qs] * scale) @ keys[:, qs].T, dim=-1)
                heads.append(weights @ values[:, vs])
            j, i = divmod(r, n_win)
            out[b, j * rh:(j + 1) * rh, i * rw:(i + 1) * rw] = torch.cat(heads, -1).reshape(rh, rw, dim)
    out = out + lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    out = wo(out)
    return out[:, :h_in, :w_in], route


def official_bra_gathered(x, qkv_weight, qkv_bias, lepe, wo, qk_dim, num_heads, n_win, topk):
    """The same official computation vectorised as the official code runs it (gather of the top-k regions), for
    whole models at 224 where the per-region loop is too slow; maps must be divisible by ``n_win``."""
    batch, height, width, dim = x.shape
    rh, rw = height // n_win, width // n_win
    regions, tokens = n_win * n_win, rh * rw
    windows = x.reshape(batch, n_win, rh, n_win, rw, dim).permute(0, 1, 3, 2, 4, 5).reshape(batch, regions, tokens, dim)
    q, kv = F.linear(windows, qkv_weight, qkv_bias).split([qk_dim, qk_dim + dim], dim=-1)
    scale = qk_dim ** -0.5
    route = torch.topk((q.mean(2) * scale) @ kv[..., :qk_dim].mean(2).transpose(-2, -1), topk, dim=-1).indices
    index = route[:, :, :, None, None].expand(-1, -1, -1, tokens, kv.shape[-1])
    selected = torch.gather(kv[:, None].expand(-1, regions, -1, -1, -1), 2, index)  # [B, R, topk, T, qk + dim]
    k_sel, v_sel = selected.reshape(batch, regions, topk * tokens, -1).split([qk_dim, dim], dim=-1)

    def heads(t):  # [B, R, L, C] -> [B, R, heads, L, C / heads]
        return t.reshape(*t.shape[:3], num_heads, -1).transpose(2, 3)
    attn = torch.softmax((heads(q) * scale) @ heads(k_sel).transpose(-2, -1), dim=-1)
    out = (attn @ heads(v_sel)).transpose(2, 3).reshape(batch, n_win, n_win, rh, rw, dim)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, dim)
    v_map = kv[..., qk_dim:].reshape(batch, n_win, n_win, rh, rw, dim).permute(0, 5, 1, 3, 2, 4)
    out = out + lepe(v_map.reshape(batch, dim, height, width)).permute(0, 2, 3, 1)
    return wo(out)


class OfficialQKVLinear(nn.Module):
    def __init__(self, dim, qk_dim):
        super().__init__()
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim)


class OfficialBRA(nn.Module):
    """Parameters of ops/bra_legacy.py BiLevelRoutingAttention ('qkvo'; router and kv_down hold none)."""

    def __init__(self, dim, num_heads, n_win, topk, side_dwconv=5):
        super().__init__()
        self.num_heads, self.n_win, self.topk = num_heads, n_win, topk
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)
        self.qkv = OfficialQKVLinear(dim, dim)
        self.wo = nn.Linear(dim, dim)

    def forward(self, x):  # the classification models: auto_pad=False
        assert x.shape[1] % self.n_win == 0 and x.shape[2] % self.n_win == 0
        return official_bra_gathered(x, self.qkv.qkv.weight, self.qkv.qkv.bias, self.lepe, self.wo, self.qkv.qk_dim,
                                     self.num_heads, self.n_win, self.topk)


class OfficialAttentionLePE(nn.Module):
    """models/_common.py AttentionLePE with its defaults: 8 heads, no qkv bias, LePE of the input x."""

    def __init__(self, dim, num_heads=8, side_dwconv=5):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.lepe = nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim)

    def forward(self, x):
        batch, height, width, dim = x.shape
        tokens = x.reshape(batch, height * width, dim)
        q, k, v = self.qkv(tokens).reshape(batch, -1, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (dim // self.num_heads) ** -0.5
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(batch, -1, dim)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.proj(out).reshape(batch, height, width, dim)


class OfficialBlock(nn.Module):
    def __init__(self, dim, topk, num_heads, n_win=7, mlp_ratio=3):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = OfficialBRA(dim, num_heads, n_win, topk) if topk > 0 else OfficialAttentionLePE(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.Identity(), nn.GELU(),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x):
        x = (x + self.pos_embed(x)).permute(0, 2, 3, 1)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x.permute(0, 3, 1, 2)


class OfficialBiFormer(nn.Module):
    """models/biformer.py BiFormer with the released settings (n_win 7, topks 1/4/16/-2, head_dim 32)."""

    def __init__(self, depth, embed_dim, topks=(1, 4, 16, -2), head_dim=32, num_classes=1000):
        super().__init__()
        d = embed_dim
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, d[0] // 2, 3, 2, 1), nn.BatchNorm2d(d[0] // 2), nn.GELU(),
            nn.Conv2d(d[0] // 2, d[0], 3, 2, 1), nn.BatchNorm2d(d[0]))])
        self.downsample_layers.extend(
            nn.Sequential(nn.Conv2d(d[i], d[i + 1], 3, 2, 1), nn.BatchNorm2d(d[i + 1])) for i in range(3))
        self.stages = nn.ModuleList(
            nn.Sequential(*[OfficialBlock(d[i], topks[i], d[i] // head_dim) for _ in range(depth[i])])
            for i in range(4))
        self.norm = nn.BatchNorm2d(d[-1])
        self.head = nn.Linear(d[-1], num_classes)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x).flatten(2).mean(-1))


def _randomise(model):
    """Non-trivial BatchNorm statistics and affine parameters, so a mis-mapped tensor shows in the output."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


@functools.lru_cache(maxsize=None)
def official_model(name):
    torch.manual_seed(1)
    return _randomise(OfficialBiFormer(**VARIANTS[name]))


def official_param_count(name):
    with torch.device('meta'):
        return sum(p.numel() for p in OfficialBiFormer(**VARIANTS[name]).parameters())


# ---------------------------------------------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------------------------------------------

def _bra(dim=16, num_heads=2, n_win=3, topk=2, qk_dim=None, **kwargs):
    torch.manual_seed(0)
    layer = BiLevelRoutingAttention(dim, num_heads=num_heads, n_win=n_win, topk=topk, qk_dim=qk_dim, **kwargs)
    return layer.double().eval()


def _official_of(layer, x, auto_pad=True):
    return official_bra_math(x, layer.qkv.qkv.weight, layer.qkv.qkv.bias, layer.lepe, layer.wo, layer.qk_dim,
                             layer.num_heads, layer.n_win, layer.topk, auto_pad)


@pytest.mark.parametrize('size, qk_dim', [((9, 6), None), ((10, 8), None), ((4, 11), 8), ((2, 2), None)])
def test_bra_matches_official_math(size, qk_dim):
    """Divisible and padded maps (bottom/right zero padding, crop), qk_dim != dim, a map smaller than the grid."""
    layer = _bra(qk_dim=qk_dim)
    x = torch.randn(2, *size, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, route = _official_of(layer, x)
        layer.keep_routing = True
        out = layer(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected)
    assert torch.equal(layer.last_routing, route)  # the kept routing is the official r_idx


def test_transcriptions_agree():
    layer = _bra()
    x = torch.randn(2, 6, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        gathered = official_bra_gathered(x, layer.qkv.qkv.weight, layer.qkv.qkv.bias, layer.lepe, layer.wo, 16, 2, 3, 2)
        torch.testing.assert_close(gathered, _official_of(layer, x)[0])


def test_bra_gradients_match_official_math():
    layer = _bra(n_win=2, topk=3)
    x = torch.randn(1, 6, 5, 16, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad()
    _official_of(layer, x)[0].square().sum().backward()
    for got, want in zip(grads, [x.grad] + [p.grad for p in layer.parameters()]):
        torch.testing.assert_close(got, want)


def test_bra_official_parameter_names():
    names = {n for n, _ in _bra().named_parameters()}
    assert names == {'qkv.qkv.weight', 'qkv.qkv.bias', 'lepe.weight', 'lepe.bias', 'wo.weight', 'wo.bias'}


def test_bra_no_pad_rejects_indivisible_map():
    layer = _bra(auto_pad=False)
    with pytest.raises(ValueError, match='not divisible by n_win=3'):
        layer(torch.zeros(1, 8, 9, 16, dtype=torch.float64))
    assert layer(torch.zeros(1, 6, 9, 16, dtype=torch.float64)).shape == (1, 6, 9, 16)


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_heads=3), 'num_heads=3 must divide'),
    (dict(topk=10), r'topk=10 must lie in \[1, n_win\*\*2 = 9\]'),
    (dict(topk=0), 'topk=0'),
    (dict(n_win=0), 'n_win must be a positive'),
])
def test_bra_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _bra(**kwargs)


@pytest.mark.parametrize('shape', [(1, 9, 9, 8), (9, 9, 16), (1, 0, 9, 16)])
def test_bra_bad_inputs(shape):
    with pytest.raises(ValueError, match='NHWC|empty'):
        _bra()(torch.zeros(shape, dtype=torch.float64))


def test_bra_traces_with_fx_for_any_size():
    layer = _bra()
    traced = torch.fx.symbolic_trace(layer)
    for size in ((9, 9), (7, 5)):
        x = torch.randn(1, *size, 16, dtype=torch.float64)
        torch.testing.assert_close(traced(x), layer(x))


def test_bra_without_lce():
    """side_dwconv=0: no LCE (the official ``lambda x: torch.zeros_like(x)``); an even kernel is refused."""
    layer = _bra(side_dwconv=0)
    assert layer.lepe is None and not any('lepe' in name for name, _ in layer.named_parameters())
    x = torch.randn(1, 6, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = official_bra_math(x, layer.qkv.qkv.weight, layer.qkv.qkv.bias, torch.zeros_like, layer.wo, 16, 2,
                                     3, 2)[0]
        torch.testing.assert_close(layer(x), expected)
    with pytest.raises(ValueError, match='side_dwconv=4 must be odd'):
        _bra(side_dwconv=4)


def test_bra_triton_matches_official_math():
    """The module's Triton path (kernels under the CPU interpreter): a padded map, the routing kept, gradients of
    the input and of every parameter (the LCE conv is folded into the kernels) against the official math."""
    layer = _bra(n_win=2, topk=3).float()
    layer.backend, layer.keep_routing = 'triton', True
    x = torch.randn(2, 5, 3, 16, generator=torch.Generator().manual_seed(4), requires_grad=True)
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), [x] + list(layer.parameters()))
    reference = _bra(n_win=2, topk=3)
    x64 = x.detach().double().requires_grad_(True)
    expected, route = _official_of(reference, x64)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x64] + list(reference.parameters()))
    assert torch.equal(layer.last_routing, route)
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)


def test_bra_module_copies_nothing_between_its_projections(monkeypatch):
    """On the Triton path the module is: qkv projection, the op (allocations and kernel launches), output
    projection. No region partition, q/k/v split, LCE input or output copy, no cat, add or zero-fill, forward or
    backward (the only other op is the sum of the LCE weight gradient's partials)."""
    from op_testing import DispatchedOps

    from visionattn.ops.triton import block_sparse as tk
    launches = []
    monkeypatch.setattr(tk.Kernel, 'launch', lambda self, *args: launches.append(self.fn.fn.__name__))

    class Ops(DispatchedOps):  # op names without the overload
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__.split('.')[0])
            return func(*args, **(kwargs or {}))

    layer = _bra(n_win=3).float()
    layer.backend = 'triton'
    x = torch.randn(2, 6, 9, 16, requires_grad=True)
    layer(x).sum().backward()  # plans the shape
    shapes_only = {'empty', 'new_empty', 'empty_strided', 'view', '_unsafe_view', 't', 'transpose', 'detach',
                   'slice', 'alias', 'expand', 'reshape', 'ones_like'}
    with Ops() as forward:
        out = layer(x)
    with Ops() as backward:
        torch.autograd.grad(out, [x] + list(layer.parameters()), torch.ones_like(out))
    compute = [name for name in forward.names if name not in shapes_only]
    assert compute == ['addmm', 'addmm'], forward.names  # the two projections (bias fused)
    compute = sorted(name for name in backward.names if name not in shapes_only)
    assert compute == ['mm'] * 4 + ['sum'] * 3, backward.names  # projections' dX/dW and dbias; the LCE partials
    assert launches[-5:] == ['_bra_route_kernel', '_bsa_fwd_kernel', '_bsa_bwd_dq_kernel', '_bsa_bwd_dkv_kernel',
                             '_lepe_grad_kernel']


# ---------------------------------------------------------------------------------------------------------------
# The models
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list(VARIANTS))
def test_params_equal_official_and_flops_match_paper(name):
    measured, facts = measure(name), paper_facts(name)
    assert measured.params == official_param_count(name) == facts.reference_params
    assert abs(measured.params / 1e6 - facts.params_m) <= 0.01 * facts.params_m
    assert abs(measured.gmacs - facts.gflops) <= 0.05 * facts.gflops


@pytest.fixture
def served_official_t(weight_server):
    """The official biformer_t checkpoint layout ({'model': ..., 'epoch', 'args'}) served over loopback HTTP."""
    served = weight_server.root
    official = official_model('biformer_t')
    checkpoint = {'model': official.state_dict(), 'epoch': 299, 'args': argparse.Namespace(model='biformer_tiny')}
    torch.save(checkpoint, served / 'biformer_tiny_in1k.pth')
    return official, weight_server


def test_official_checkpoint_loads_strictly_and_predicts_the_same(served_official_t):
    official, server = served_official_t
    overlay = dict(url=server.url('biformer_tiny_in1k.pth'))
    model = timm.create_model('biformer_t', pretrained=True, pretrained_cfg_overlay=overlay).eval()
    assert server.requests == ['/biformer_tiny_in1k.pth']
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), official(x), rtol=1e-4, atol=1e-4)

    # features_only: the checkpoint's backbone plus fresh LayerNorm2d on each stage output, no BatchNorm head
    features = timm.create_model('biformer_t', pretrained=True, pretrained_cfg_overlay=overlay, features_only=True)
    assert features.feature_info.channels() == [64, 128, 256, 512]
    with torch.no_grad():
        maps = features.eval()(x[:, :, :64, :64])
        stage0 = model.stages[0](model.stem(x[:, :, :64, :64]))
    torch.testing.assert_close(maps[0], F.layer_norm(stage0.permute(0, 2, 3, 1), (64,), eps=1e-6).permute(0, 3, 1, 2))


def test_wrong_checkpoint_names_the_keys(served_official_t, tmp_path):
    _, server = served_official_t
    state = official_model('biformer_t').state_dict()
    state.pop('stages.2.7.attn.wo.weight')
    torch.save({'model': state}, tmp_path / 'served' / 'broken.pth')
    with pytest.raises(CheckpointMismatchError, match=r'missing keys \(1\): stages\.2\.blocks\.7\.attn\.wo\.weight'):
        timm.create_model('biformer_t', pretrained=True, pretrained_cfg_overlay=dict(url=server.url('broken.pth')))


def test_any_input_size_pads():
    torch.manual_seed(0)
    model = timm.create_model('biformer_t', num_classes=5).eval()
    with torch.no_grad():
        final, maps = model.forward_intermediates(torch.randn(1, 3, 100, 75))
    assert [tuple(m.shape[-2:]) for m in maps] == [(25, 19), (13, 10), (7, 5), (4, 3)]
    assert final.shape == (1, 512, 4, 3)
    strict = timm.create_model('biformer_t', auto_pad=False)
    with pytest.raises(ValueError, match='not divisible by n_win=7'):
        strict(torch.randn(1, 3, 100, 100))


def test_official_names_resolve_to_the_short_ones():
    assert not visionattn.list_models('biformer_tiny') and not timm.list_models('biformer_small')
    for long, short in (('biformer_tiny', 'biformer_t'), ('biformer_small', 'biformer_s'),
                        ('biformer_base', 'biformer_b')):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            model = timm.create_model(long, device='meta')
        assert any(short in str(w.message) for w in caught)
        assert model.pretrained_cfg['architecture'] == short
        assert model.pretrained_cfg['url'] == timm.models.get_pretrained_cfg(short).url
        assert sum(p.numel() for p in model.parameters()) == official_param_count(short)


def test_model_bad_arguments():
    with pytest.raises(ValueError, match='topk must be positive .* or -2'):
        timm.create_model('biformer_t', topks=(1, 4, -1, -2), device='meta')
    with pytest.raises(ValueError, match='one entry per stage'):
        timm.create_model('biformer_t', topks=(1, 4, 16), device='meta')
    model = timm.create_model('biformer_t', device='meta')
    x = torch.empty(1, 3, 64, 64, device='meta')
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(x, output_fmt='NLC')
    with pytest.raises(ValueError, match=r'indices=\[4\]'):
        model.forward_intermediates(x, indices=[4])
    with pytest.raises(ValueError, match='NHWC map'):
        model.stages[0].blocks[0].attn(torch.empty(1, 8, 8, 32, device='meta'))


def _compile_check(model, x):
    """torch.compile(fullgraph=True) (aot_eager: tracing, no code generation) for inference and for training: no
    graph break, no recompilation at a fixed shape, eager's outputs and gradients."""
    import torch._dynamo
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        with torch.no_grad():
            model.eval()
            torch.testing.assert_close(compiled(x), model(x))
            compiled(x + 1)
        torch._dynamo.reset()
        model.train()
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        compiled(x + 1).sum().backward()
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
    torch._dynamo.reset()


def test_compiles_fullgraph_small():
    """biformer_s's code (BRA stages, global-attention stage) with one block per stage, at 64x64."""
    torch.manual_seed(0)
    model = timm.create_model('biformer_s', depths=(1, 1, 1, 1), num_classes=5)
    _compile_check(model, torch.randn(2, 3, 64, 64))


@pytest.mark.slow
def test_biformer_s_compiles_fullgraph():
    torch.manual_seed(0)
    _compile_check(timm.create_model('biformer_s', num_classes=5), torch.randn(1, 3, 64, 64))
