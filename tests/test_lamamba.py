"""LaMamba: SS2D, shifted-window attention, the backbone's extras and the LaMamba-Diff U-Net denoiser."""
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from compile_testing import GraphRecorder, check_compiled_training, skip_unless_interpreting
from timm.models.swin_transformer import SwinTransformerBlock
from visionattn.heads.diffusion.lamamba_diff import (
    ConditionedLaMambaBlock,
    LaMambaDiff,
    convert_official_checkpoint,
    lamamba_diff_tiny,
    lamamba_diff_xl,
)

import visionattn  # registers the backbones
from visionattn.layers.ss2d import SS2D, ShiftedWindowAttention, continuous_scan_paths, selective_scan_flops
from visionattn.ops.reference.selective_scan import selective_scan_ref

pytestmark = pytest.mark.heads


# ----------------------------------------------------------------------------------------------- scan orders
def _official_snake_paths(n):
    """LaMamba-Diff's get_continuous_paths for an n x n map, written out as loops (model/continuous_scan.py)."""
    def rows_first(start_row, dir_row):
        return [(start_row + dir_row * i) * n + (j if i % 2 == 0 else n - 1 - j) for i in range(n) for j in range(n)]

    def cols_first(start_col, dir_col):
        return [(n - 1 - (i if j % 2 == 0 else n - 1 - i)) * n + start_col + dir_col * j
                for j in range(n) for i in range(n)]
    return torch.tensor([rows_first(0, 1), rows_first(n - 1, -1), cols_first(0, 1), cols_first(n - 1, -1)])


@pytest.mark.parametrize('n', [2, 5, 8])
def test_continuous_paths_match_official(n):
    assert torch.equal(continuous_scan_paths(n, n), _official_snake_paths(n))


@pytest.mark.parametrize('shape', [(3, 5), (4, 2)])
def test_continuous_paths_are_snakes_over_rectangles(shape):
    height, width = shape
    paths = continuous_scan_paths(height, width)
    for path in paths:
        assert sorted(path.tolist()) == list(range(height * width))  # a permutation
        rows, cols = path // width, path % width
        steps = (rows.diff().abs() + cols.diff().abs())
        assert (steps == 1).all()  # every step moves to a neighbour: no jump across the image


# ----------------------------------------------------------------------------------------------- SS2D
def _ss2d_by_paths(module: SS2D, x: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """SS2D computed direction by direction with explicit scan orders and the step-by-step reference scan."""
    xz = module.in_proj(x)
    u, z = xz.chunk(2, dim=-1)
    u = F.silu(module.conv2d(u.permute(0, 3, 1, 2))).flatten(2)  # [B, D, L]
    batch, dim, length = u.shape
    rank, n_state = module.dt_rank, module.d_state
    y = torch.zeros(batch, dim, length)
    for k, path in enumerate(paths):
        seq = u[:, :, path]
        proj = torch.einsum('bdl,cd->bcl', seq, module.x_proj_weight[k])
        dt = torch.einsum('brl,dr->bdl', proj[:, :rank], module.dt_projs_weight[k])
        part = slice(k * dim, (k + 1) * dim)
        out = selective_scan_ref(seq, dt, -module.A_logs[part].exp(), proj[:, rank:rank + n_state],
                                 proj[:, rank + n_state:], module.Ds[part], delta_bias=module.dt_projs_bias[k],
                                 delta_softplus=True)
        y[:, :, path] += out
    y = module.out_norm(y.transpose(1, 2)).view(*x.shape[:3], dim)
    return module.out_proj(y * F.silu(z))


def _raster_paths(height, width):
    rows = torch.arange(height * width)
    cols = torch.arange(height * width).view(height, width).t().flatten()
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


@pytest.mark.parametrize('continuous', [False, True])
def test_ss2d_matches_direction_by_direction_scan(continuous):
    torch.manual_seed(0)
    module = SS2D(8, d_state=2, ssm_ratio=2.0, continuous_scan=continuous)
    x = torch.randn(2, 3, 5, 8)
    paths = continuous_scan_paths(3, 5) if continuous else _raster_paths(3, 5)
    torch.testing.assert_close(module(x), _ss2d_by_paths(module, x, paths), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('continuous', [False, True])
def test_ss2d_on_the_kernels_matches_the_reference(monkeypatch, continuous):
    """SS2D through the Triton path (interpreter on CPU) as through the reference: the scan's strided inputs (slices
    of the projections, the channels-last map) reach the kernels as they are; output and every gradient."""
    from op_testing import kernel_device
    device = kernel_device()
    torch.manual_seed(0)
    module = SS2D(8, d_state=2, ssm_ratio=2.0, continuous_scan=continuous).to(device)
    x = torch.randn(2, 5, 3, 8, device=device)
    results = []
    for backend in ('reference', 'triton'):
        monkeypatch.setenv('VISIONATTN_BACKEND', backend)
        module.zero_grad()
        x_leaf = x.clone().requires_grad_()
        y = module(x_leaf)
        y.square().sum().backward()
        results.append([y, x_leaf.grad] + [p.grad.clone() for p in module.parameters()])
    names = ['y', 'x'] + [name for name, _ in module.named_parameters()]
    for name, want, got in zip(names, *results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=name)


def test_ss2d_parameters_initialisation_and_gradients():
    d_model, d_state = 20, 3
    module = SS2D(d_model, d_state=d_state, ssm_ratio=2.0, conv_bias=False)
    d_inner, rank = 40, math.ceil(20 / 16)
    expected = {  # VMamba's SS2D.__initv2__ (official names and shapes)
        'in_proj.weight': (2 * d_inner, d_model), 'conv2d.weight': (d_inner, 1, 3, 3),
        'x_proj_weight': (4, rank + 2 * d_state, d_inner), 'dt_projs_weight': (4, d_inner, rank),
        'dt_projs_bias': (4, d_inner), 'A_logs': (4 * d_inner, d_state), 'Ds': (4 * d_inner,),
        'out_norm.weight': (d_inner,), 'out_norm.bias': (d_inner,), 'out_proj.weight': (d_model, d_inner)}
    assert {k: tuple(v.shape) for k, v in module.named_parameters()} == expected
    torch.testing.assert_close(module.A_logs.exp(), torch.arange(1., d_state + 1).expand(4 * d_inner, -1))
    assert (module.Ds == 1).all()
    dt = F.softplus(module.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    x = torch.randn(1, 4, 4, d_model)
    module(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_ss2d_in_a_model_cast_to_another_dtype(dtype):
    """``model.double()`` / ``.bfloat16()``: the scan's float32 output reached out_norm's weights of the model's
    dtype and failed ('mixed dtype'); it now comes out in the parameters' dtype (found by the adversarial probe).
    float64 gives the float32 model's output."""
    torch.manual_seed(0)
    module = SS2D(12, d_state=1, ssm_ratio=2.0)
    cast = SS2D(12, d_state=1, ssm_ratio=2.0).to(dtype)
    cast.load_state_dict(module.state_dict())
    x = torch.randn(1, 4, 5, 12)
    out = cast(x.to(dtype))
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(out.float(), module(x), rtol=tol, atol=tol)
    out.float().sum().backward()
    denoiser = lamamba_diff_tiny().to(dtype)
    assert denoiser(torch.randn(1, 4, 16, 16, dtype=dtype), torch.tensor([3])).dtype == dtype


def test_selective_scan_flops_formula():
    # VMamba's flops_selective_scan_fn(B=2, L=64, D=96, N=1, with_D=True, with_Z=False) = 9 B L D N + B D L
    assert selective_scan_flops(2, 64, 96, 1) == 9 * 2 * 64 * 96 + 2 * 96 * 64
    module = SS2D(16, d_state=1, ssm_ratio=2.0)
    assert module.scan_flops(1, 8, 8) == selective_scan_flops(1, 64, 4 * 32, 1)


# ----------------------------------------------------------------------------------------------- window attention
@pytest.mark.parametrize('shift', [0, 2])
def test_window_attention_matches_timm_swin(shift):
    torch.manual_seed(0)
    dim, heads, window = 16, 2, 4
    ours = ShiftedWindowAttention(dim, heads, window, shift)
    swin = SwinTransformerBlock(dim, (8, 8), num_heads=heads, window_size=window, shift_size=shift)
    with torch.no_grad():
        for name in ('qkv.weight', 'qkv.bias', 'proj.weight', 'proj.bias', 'relative_position_bias_table'):
            swin.attn.get_parameter(name).copy_(ours.get_parameter(name))
    x = torch.randn(2, 8, 8, dim)
    torch.testing.assert_close(ours(x), swin._attn(x), rtol=1e-5, atol=1e-5)


def test_shifted_window_mask_blocks_wrapped_tokens():
    torch.manual_seed(0)
    attn = ShiftedWindowAttention(8, 2, window_size=4, shift_size=2).eval()
    x = torch.randn(1, 8, 8, 8)
    x2 = x.clone()
    x2[0, 0, 0] += 10
    changed = (attn(x2) - attn(x)).abs().sum(-1)[0] > 1e-6
    # (0, 0) rolls to (6, 6): its shifted window holds rows/cols 6-7 (original 0-1) only, the rest is masked.
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(changed, expected)


def test_window_attention_pads_odd_sizes_and_checks_arguments():
    attn = ShiftedWindowAttention(8, 2, window_size=4, shift_size=2)
    assert attn(torch.randn(1, 5, 7, 8)).shape == (1, 5, 7, 8)
    assert attn(torch.randn(1, 3, 2, 8)).shape == (1, 3, 2, 8)  # smaller than a window: one window, no shift
    with pytest.raises(ValueError, match='divide'):
        ShiftedWindowAttention(10, 3)
    with pytest.raises(ValueError, match='shift_size'):
        ShiftedWindowAttention(8, 2, window_size=4, shift_size=4)


# ----------------------------------------------------------------------------------------------- backbone
@pytest.mark.backbones
def test_backbone_odd_input_and_features():
    model = timm.create_model('lamamba_tiny', features_only=True, out_indices=(1, 2, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 72, 40))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 9, 5), (1, 384, 5, 3), (1, 768, 3, 2)]
    assert model.feature_info.channels() == [192, 384, 768]
    assert not timm.models.get_pretrained_cfg('lamamba_tiny').has_weights  # no published weights
    assert visionattn.zoo.weight_source('lamamba_tiny') == 'none'
    with pytest.raises(ValueError, match='heads'):
        timm.create_model('lamamba_tiny', num_heads=(5, 6, 12, 24))


# ----------------------------------------------------------------------------------------------- LaMamba-Diff
def _official_xl_params(d=320, depths=(2, 2, 2, 2), bottleneck=2, heads=8, window=8, res=32, n_state=1, ratio=2,
                        num_classes=1000, in_ch=4, patch=1):
    """LaMambaDiff(...) parameter count summed from model/lamamba.py + vmamba.py (conv_bias False, learn_sigma)."""
    def ss2d(c):
        inner, rank = int(ratio * c), math.ceil(c / 16)
        return (c * 2 * inner + inner * 9 + 4 * (rank + 2 * n_state) * inner + 4 * inner * rank + 4 * inner
                + 4 * inner * n_state + 4 * inner + 2 * inner + inner * c)

    def block(c, cond, project, resolution):
        win = min(window, resolution)
        attn = (2 * win - 1) ** 2 * heads + (3 * c * c + 3 * c) + (c * c + c)
        mlp = (c * 4 * c + 4 * c) + (4 * c * c + c)
        return ((cond * c + c) * project + 3 * 2 * c + ss2d(c) + attn + mlp + (c * 9 * c + 9 * c))

    dims, cond = [d, 2 * d, 4 * d, 4 * d], 4 * d
    res_down = [res, res // 2, res // 4, res // 4]
    total = (in_ch * patch * patch * d + d) + 2 * d + res * res * d  # patch_embed conv + LN, pos_embed
    total += (256 * cond + cond) + (cond * cond + cond) + (num_classes + 1) * cond  # t and y embedders
    for i in range(4):
        total += depths[i] * block(dims[i], cond, dims[i] != cond, res_down[i])
        if i < 2:
            total += 2 * 4 * dims[i] + 4 * dims[i] * dims[i + 1]  # PatchMerging2D: LN(4C) + Linear(4C, 2C)
    total += bottleneck * block(cond, cond, False, res // 4)
    dims_up, res_up = dims[::-1], res_down[::-1]
    for i in range(4):
        total += (depths[::-1][i] + 1) * block(dims_up[i], cond, True, res_up[i])
        if i >= 2:
            total += dims_up[i - 1] * 2 * dims_up[i - 1] + 2 * (dims_up[i - 1] // 2)  # PatchExpanding2D
    total += d * patch * patch * d + 2 * d  # FinalPatchExpanding2D
    total += (cond * d + d) + (d * 2 * d + 2 * d) + (d * 2 * in_ch + 2 * in_ch)  # final cond proj, adaLN, linear
    return total


@pytest.mark.parametrize('kwargs', [{}, dict(input_size=64, num_heads=16), dict(num_classes=0)])
def test_xl_parameter_count_matches_official_arithmetic(kwargs):
    with torch.device('meta'):
        model = lamamba_diff_xl(**kwargs)
    official = _official_xl_params(res=kwargs.get('input_size', 32), num_classes=kwargs.get('num_classes', 1000),
                                   heads=kwargs.get('num_heads', 8))
    assert sum(p.numel() for p in model.parameters()) == official
    if not kwargs:
        assert official == 652_445_048


def test_tiny_denoiser_interface_and_shapes():
    torch.manual_seed(0)
    model = lamamba_diff_tiny()
    assert (model.in_channels, model.out_channels, model.input_size, model.num_classes) == (4, 8, 16, 10)
    x = torch.randn(2, 4, 16, 16)
    out = model(x, torch.tensor([3, 700]), torch.tensor([1, 10]))  # 10 = the null label
    assert out.shape == (2, 8, 16, 16) and torch.isfinite(out).all()
    assert model(x, torch.tensor(5)).shape == (2, 8, 16, 16)  # scalar t; y None = null label
    guided = model.forward_with_cfg(torch.cat([x[:1], x[:1]]), torch.tensor([5, 5]), torch.tensor([2, 10]), 4.0)
    torch.testing.assert_close(guided[0, :4], guided[1, :4])
    with pytest.raises(ValueError, match='latents'):
        model(torch.randn(2, 4, 12, 12), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match='four stages'):
        LaMambaDiff(depths=(1, 1, 1))
    with pytest.raises(ValueError, match='divisible'):
        LaMambaDiff(input_size=18, embed_dim=16)


def test_zero_init_makes_blocks_identity_and_structure_matches_official():
    torch.manual_seed(0)
    model = lamamba_diff_tiny(depths=(2, 1, 1, 1))
    blocks = [m for m in model.modules() if isinstance(m, ConditionedLaMambaBlock)]
    assert len(blocks) == 5 + 1 + 9  # encoder 2+1+1+1, mid 1, decoder (1+1) x 3 + (2+1)
    x, c = torch.randn(2, 16, 16, 16), torch.randn(2, 64)
    torch.testing.assert_close(model.layers[0].blocks[0](x, c), x)  # adaLN zero-initialised: gates are 0
    assert model.final_adaLN_modulation[-1].weight.abs().sum() == 0
    assert model.final_linear.weight.abs().sum() > 0  # official quirk: the output layer is not zeroed
    assert model.layers[0].blocks[1].attn.shift_size == 2  # odd blocks shift by window / 2
    assert model.layers[2].blocks[0].attn.window_size == 4  # resolution 4 == window: one window
    assert isinstance(model.layers[2].blocks[0].condition_projection, torch.nn.Identity)  # 4d == cond width
    assert isinstance(model.layers_up[0].blocks[0].condition_projection, torch.nn.Linear)  # decoder always projects
    assert [len(s.blocks) for s in model.layers_up] == [2, 2, 2, 3]


def test_tiny_denoiser_trains_loss_falls():
    """A few DDPM epsilon-prediction steps on a fixed batch of structured latents: the loss must fall."""
    torch.manual_seed(0)
    model = lamamba_diff_tiny(embed_dim=8, depths=(1, 1, 1, 1), bottleneck_depth=1)
    betas = torch.linspace(1e-4, 0.02, 1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    grid = torch.linspace(-1, 1, 16)
    x0 = torch.stack([torch.sin(3 * grid)[None, :] * torch.cos(2 * grid)[:, None] * (k + 1) for k in range(4)])
    x0 = x0[None].repeat(4, 1, 1, 1)
    noise = torch.randn_like(x0)
    t = torch.tensor([50, 300, 600, 900])
    y = torch.tensor([0, 1, 2, 3])
    xt = alpha_bar[t].sqrt()[:, None, None, None] * x0 + (1 - alpha_bar[t]).sqrt()[:, None, None, None] * noise
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = F.mse_loss(model(xt, t, y)[:, :4], noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_official_checkpoint_layout_loads_strictly():
    torch.manual_seed(0)
    model = lamamba_diff_tiny()
    ema = {f'module.{k}': v.clone() for k, v in model.state_dict().items()}
    # the official model also saves its Swin buffers
    ema['module.layers.0.blocks.0.attn.relative_position_index'] = torch.zeros(16, 16, dtype=torch.long)
    ema['module.layers.0.blocks.0.attn_mask'] = torch.zeros(16, 16, 16)
    fresh = lamamba_diff_tiny()
    fresh.load_state_dict(convert_official_checkpoint({'model': {}, 'ema': ema, 'args': None}), strict=True)
    x = torch.randn(1, 4, 16, 16)
    torch.testing.assert_close(fresh(x, torch.tensor([9]), torch.tensor([1])), model(x, torch.tensor([9]),
                                                                                        torch.tensor([1])))


@pytest.mark.tools
def test_flops_tool_counts_scan_and_dense_work():
    from tools.diffusion_flops import count_denoiser  # noqa: PLC0415

    tiny = count_denoiser(lamamba_diff_tiny, 16)
    with torch.device('meta'):
        model = lamamba_diff_tiny()
    assert tiny['scan_gmacs'] * 1e9 == pytest.approx(model.scan_flops(1))
    assert tiny['dense_gmacs'] > 0 and tiny['layer_norm_g'] > 0


@pytest.mark.slow
def test_small_lamamba_compiles_fullgraph_on_the_triton_path(monkeypatch):
    """Issue 27: LaMamba compiles for inference and training with fullgraph=True, one graph each and no
    recompilation at a fixed shape, SS2D's scan inside the graph as the merged kernels' custom op (run by the
    interpreter on the CPU), and two AdamW steps agree with eager mode (about 2 minutes on 2 CPU cores)."""
    skip_unless_interpreting()
    monkeypatch.setenv('VISIONATTN_BACKEND', 'triton')
    torch.manual_seed(0)
    model = timm.create_model('lamamba_tiny', depths=(1, 1, 1, 1), dims=(16, 32, 32, 32), num_heads=(1, 2, 2, 2),
                              window_size=4, num_classes=5)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    recorder = GraphRecorder('eager')
    compiled = torch.compile(model, backend=recorder, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        with torch.no_grad():
            expected = model.eval()(x)
            for _ in range(2):
                torch.testing.assert_close(compiled(x), expected, rtol=1e-5, atol=1e-5)
        assert len(recorder.graphs) == 1
        torch._dynamo.reset()
        recorder = GraphRecorder('aot_eager')
        compiled = torch.compile(model, backend=recorder, fullgraph=True)
        check_compiled_training(model, compiled, x, torch.tensor([1, 3]), tol=1e-3)
    assert len(recorder.graphs) == 1
    from visionattn.ops.triton import cross_scan
    op = 'merged_cross_scan' if cross_scan.ENABLED else 'cross_selective_scan'  # the custom op SS2D's scan runs
    assert any(op in target for target in recorder.targets())
