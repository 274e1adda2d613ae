"""Multi-scale deformable attention: the reference against a brute-force bilinear oracle (fp64) and gradcheck, the
Triton kernels (interpreter on CPU, Focus-DETR sizes on a GPU) against the fp32 reference for the output and every
gradient, argument errors, and the MultiScaleDeformableAttention layer."""
import math

import pytest
import torch
from op_testing import assert_kernel_close, grads, kernel_device

from visionattn.layers import MultiScaleDeformableAttention
from visionattn.ops import BackendUnavailableError, ms_deform_attn
from visionattn.ops.deformable import explain_ms_deform_attn
from visionattn.ops.reference.deformable import ms_deform_attn_ref

pytestmark = pytest.mark.ops

NAMES = ('value', 'spatial_shapes', 'level_start_index', 'sampling_locations', 'attention_weights')
ODD_LEVELS = ((7, 5), (4, 3), (2, 2), (1, 1))


def level_tables(sizes, device='cpu'):
    shapes = torch.tensor(sizes, dtype=torch.long, device=device)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return shapes, starts, int(areas.sum())


def make_inputs(batch, queries, heads, head_dim, sizes, points, device='cpu', seed=0, spread=(-0.15, 1.15)):
    """fp32 inputs; locations spread a little beyond [0, 1] so that some corners (and whole samples) fall outside
    the maps; attention weights softmaxed over levels x points as the layer makes them."""
    gen = torch.Generator().manual_seed(seed)
    shapes, starts, total = level_tables(sizes)
    levels = len(sizes)
    value = torch.randn(batch, total, heads, head_dim, generator=gen)
    lo, hi = spread
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=gen) * (hi - lo) + lo
    logits = torch.randn(batch, queries, heads, levels * points, generator=gen)
    attn = logits.softmax(-1).view(batch, queries, heads, levels, points)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def brute_force(value, sizes, loc, attn):
    """Bilinear sampling written out per sample in fp64: pixel (x * W - 0.5, y * H - 0.5), four corners, zero
    outside the map."""
    value, loc, attn = value.double(), loc.double(), attn.double()
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = loc.shape
    out = torch.zeros(batch, queries, heads, head_dim, dtype=torch.float64)
    start = 0
    for lvl, (height, width) in enumerate(sizes):
        level = value[:, start:start + height * width].reshape(batch, height, width, heads, head_dim)
        for b in range(batch):
            for q in range(queries):
                for h in range(heads):
                    for p in range(points):
                        x = loc[b, q, h, lvl, p, 0].item() * width - 0.5
                        y = loc[b, q, h, lvl, p, 1].item() * height - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = torch.zeros(head_dim, dtype=torch.float64)
                        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                            if 0 <= xi < width and 0 <= yi < height:
                                weight = (1 - abs(x - xi)) * (1 - abs(y - yi))
                                sample += weight * level[b, yi, xi, h]
                        out[b, q, h] += attn[b, q, h, lvl, p] * sample
        start += height * width
    return out.flatten(2)


def test_reference_matches_brute_force():
    value, shapes, starts, loc, attn = make_inputs(2, 6, 3, 4, ODD_LEVELS, 3, spread=(-0.3, 1.3))
    assert ((loc < 0) | (loc > 1)).any()
    got = ms_deform_attn_ref(value.double(), shapes, starts, loc.double(), attn.double())
    torch.testing.assert_close(got, brute_force(value, ODD_LEVELS, loc, attn), rtol=1e-12, atol=1e-12)
    # the public op on the CPU takes the reference
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn),
                               ms_deform_attn_ref(value, shapes, starts, loc, attn))


def test_reference_gradcheck():
    value, shapes, starts, loc, attn = make_inputs(1, 3, 2, 3, ((3, 4), (2, 1)), 2, seed=3)
    inputs = [t.double().requires_grad_() for t in (value, loc, attn)]

    def fn(v, locations, weights):
        return ms_deform_attn_ref(v, shapes, starts, locations, weights)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) for t in tensors]


def _check_kernel(batch, queries, heads, head_dim, sizes, points, dtype, loc_dtype=None, device='cpu', seed=0):
    """Output and the three gradients under the kernel rule. Note: Triton's interpreter truncates fp32 -> bf16
    stores (a GPU rounds to nearest), so on the CPU the bf16 output error is up to one bf16 ulp, within bf16's atol."""
    base = make_inputs(batch, queries, heads, head_dim, sizes, points, device=device, seed=seed)
    loc_dtype = loc_dtype or dtype
    low = [base[0].to(dtype), base[1], base[2], base[3].to(loc_dtype), base[4].to(loc_dtype)]
    ref_inputs, same_inputs, kernel_inputs = _leaves(base), _leaves(low), _leaves(low)
    out_ref = ms_deform_attn_ref(*ref_inputs)
    out_same = ms_deform_attn_ref(*same_inputs)
    out_kernel = ms_deform_attn(*kernel_inputs, backend='triton')
    assert out_kernel.dtype == dtype and out_kernel.shape == (batch, queries, heads * head_dim)
    assert_kernel_close(out_kernel, out_same, out_ref, 'output')
    grad_out = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    g_ref = grads(out_ref, ref_inputs, grad_out)
    g_same = grads(out_same, same_inputs, grad_out.to(dtype))
    g_kernel = grads(out_kernel, kernel_inputs, grad_out.to(dtype))
    assert g_kernel.keys() == g_ref.keys() == {0, 3, 4}
    for i in g_ref:
        assert g_kernel[i].dtype == kernel_inputs[i].dtype, NAMES[i]
        # location gradients scale with the map size (d pixel / d loc = W): scale atol with the gradient's size
        scale = max(1.0, g_ref[i].abs().max().item())
        atol = 1e-5 * scale if g_kernel[i].dtype == torch.float32 else None
        assert_kernel_close(g_kernel[i], g_same[i], g_ref[i], f'grad {NAMES[i]}', atol=atol)


KERNEL_CASES = [
    # batch, queries, heads, head_dim, level sizes, points, dtype, location/weight dtype
    (2, 13, 3, 5, ODD_LEVELS, 3, torch.float32, None),
    (1, 9, 2, 8, ((5, 6), (3, 3)), 2, torch.bfloat16, None),
    (1, 7, 2, 4, ((3, 5), (2, 1), (1, 2)), 3, torch.float16, None),
    (1, 6, 2, 6, ((4, 3), (2, 2)), 2, torch.bfloat16, torch.float32),  # autocast: bf16 value, fp32 locations
]


@pytest.mark.parametrize('batch,queries,heads,head_dim,sizes,points,dtype,loc_dtype', KERNEL_CASES)
def test_kernel_matches_reference(batch, queries, heads, head_dim, sizes, points, dtype, loc_dtype):
    _check_kernel(batch, queries, heads, head_dim, sizes, points, dtype, loc_dtype)


def _focus_detr_levels(height=100, width=150):
    """R50 strides 8/16/32/64 of a padded image batch, halved with ceil as the backbone/neck do."""
    sizes = [(height, width)]
    for _ in range(3):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return tuple(sizes)


CUDA_CASES = [
    # encoder: every token a query; decoder: 900 queries + 200 denoising queries
    ('encoder', torch.float32), ('encoder', torch.bfloat16), ('decoder', torch.float32),
    ('decoder', torch.bfloat16), ('decoder', torch.float16),
]


@pytest.mark.cuda
@pytest.mark.parametrize('stage,dtype', CUDA_CASES)
def test_kernel_matches_reference_cuda(stage, dtype):
    sizes = _focus_detr_levels()
    queries = sum(h * w for h, w in sizes) if stage == 'encoder' else 900 + 200
    _check_kernel(2, queries, 8, 32, sizes, 4, dtype, device='cuda')


def test_strided_inputs_and_no_grad():
    """Non-contiguous views (value as a slice of a wider projection, transposed locations) give the same result."""
    value, shapes, starts, loc, attn = make_inputs(1, 5, 2, 3, ((3, 4), (2, 2)), 2, seed=5)
    wide = torch.cat([value, torch.randn_like(value)], dim=-1)[..., :3]
    loc_t = loc.transpose(1, 2).contiguous().transpose(1, 2)
    expected = ms_deform_attn_ref(value, shapes, starts, loc, attn)
    with torch.no_grad():
        got = ms_deform_attn(wide, shapes, starts, loc_t, attn, backend='triton')
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_custom_op_registration_and_compile():
    """The custom op's schema, fake (meta) implementation and autograd registration, and a full graph through
    torch.compile (the kernel stays opaque)."""
    from visionattn.ops.triton import deformable as kernels
    args = _leaves(make_inputs(1, 3, 2, 3, ((3, 2), (1, 2)), 2, device=kernel_device()))
    torch.library.opcheck(kernels._msda_fwd_op, args,
                          test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))
    compiled = torch.compile(kernels.ms_deform_attn_triton, backend='eager', fullgraph=True)
    out = compiled(*args)
    torch.testing.assert_close(out, ms_deform_attn_ref(*args), rtol=1e-5, atol=1e-5)
    assert grads(out, args, torch.ones_like(out)).keys() == {0, 3, 4}


def _triton_everywhere(monkeypatch):
    """The automatic backend choice (ops/checks.py) is outside these tests: take the Triton path directly, so that
    what is traced is this op's own host path."""
    import sys
    module = sys.modules['visionattn.ops.deformable']
    monkeypatch.setattr(module, 'choose_backend', lambda op, backend, tensors, extra=(): 'triton')
    return module


@pytest.mark.parametrize('table', ['tensors', 'lists'])
def test_public_op_compiles_fullgraph(monkeypatch, table):
    """The public op (argument checks, level table, dispatch) traces with fullgraph=True through the custom op's
    fake implementations (aot_eager traces the backward too) and gives the reference's output and gradients."""
    module = _triton_everywhere(monkeypatch)
    device = kernel_device()
    value, shapes, starts, loc, attn = _leaves(make_inputs(1, 5, 2, 3, ((3, 4), (2, 2)), 2, device=device, seed=7))
    tables = (shapes, starts) if table == 'tensors' else ([[3, 4], [2, 2]], [0, 12])
    torch._dynamo.reset()
    compiled = torch.compile(module.ms_deform_attn, backend='aot_eager', fullgraph=True)
    out = compiled(value, *tables, loc, attn)
    ref_inputs = _leaves([value, shapes, starts, loc, attn])
    expected = ms_deform_attn_ref(*ref_inputs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device)
    got = grads(out, [value, None, None, loc, attn], grad_out)
    want = grads(expected, ref_inputs, grad_out)
    for i in (0, 3, 4):
        torch.testing.assert_close(got[i], want[i], rtol=1e-4, atol=1e-5)


def test_level_table_is_read_once_per_tensor(monkeypatch):
    """A table given as tensors is read to the host (a device sync on CUDA) on its first call only; an in-place
    change, or a value with another S, is checked again."""
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, 'tolist', lambda self: reads.append(1) or tolist(self))
    device = kernel_device()
    value, shapes, starts, loc, attn = make_inputs(1, 4, 2, 3, ((3, 2), (1, 2)), 2, device=device)
    first = ms_deform_attn(value, shapes, starts, loc, attn, backend='triton')
    assert len(reads) == 1
    torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn, backend='triton'), first)
    assert len(reads) == 1  # the second call trusts the table it has seen
    starts[1] = 5  # in place: the version counter moves, so the table is read and checked again
    with pytest.raises(ValueError, match=r'level_start_index \[0, 5\] is inconsistent'):
        ms_deform_attn(value, shapes, starts, loc, attn, backend='triton')
    assert len(reads) == 2
    starts[1] = 6
    with pytest.raises(ValueError, match='S=9 positions'):
        ms_deform_attn(torch.zeros(1, 9, 2, 3, device=device), shapes, starts, loc, attn, backend='triton')


def test_level_table_changed_in_place_under_inference_mode():
    # Adversarial probe: an inference tensor has no version counter, so a level table reused under
    # torch.inference_mode and rewritten in place kept its remembered sizes: value was split into the old levels
    # (a silent wrong answer, 0.8 off) and the new table was never checked.
    value, _, _, loc, attn = make_inputs(1, 4, 2, 3, ((3, 2), (1, 2)), 2)
    with torch.inference_mode():
        shapes, starts = torch.tensor([[3, 2], [1, 2]]), torch.tensor([0, 6])
        ms_deform_attn(value, shapes, starts, loc, attn)
        shapes.copy_(torch.tensor([[1, 2], [3, 2]]))
        starts[1] = 2
        torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn),
                                   ms_deform_attn(value, [[1, 2], [3, 2]], [0, 2], loc, attn))
        starts[1] = 5
        with pytest.raises(ValueError, match=r'level_start_index \[0, 5\] is inconsistent'):
            ms_deform_attn(value, shapes, starts, loc, attn)


def test_level_table_from_lists_is_made_once(monkeypatch):
    """Python level tables become device tensors once (made outside inference mode, so that a table first used
    under torch.inference_mode still serves a training call); a value of another S is still refused."""
    import sys
    sys.modules['visionattn.ops.deformable']._DEVICE_TABLES.clear()
    device = kernel_device()
    value, shapes, starts, loc, attn = make_inputs(1, 4, 2, 3, ((3, 2), (1, 2)), 2, device=device)
    made = []
    tensor = torch.tensor
    monkeypatch.setattr(torch, 'tensor', lambda *a, **k: made.append(1) or tensor(*a, **k))
    sizes, offsets = [[3, 2], [1, 2]], [0, 6]
    with torch.inference_mode():
        expected = ms_deform_attn(value, sizes, offsets, loc, attn, backend='triton')
    assert len(made) == 2
    leaves = _leaves([value, loc, attn])
    out = ms_deform_attn(leaves[0], ((3, 2), (1, 2)), (0, 6), leaves[1], leaves[2], backend='triton')
    assert len(made) == 2  # tuples or lists, the same table: no new tensors
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(t.grad is not None for t in leaves)
    with pytest.raises(ValueError, match='S=9 positions'):
        ms_deform_attn(torch.zeros(1, 9, 2, 3, device=device), sizes, offsets, loc, attn, backend='triton')
    with pytest.raises(ValueError, match=r'spatial_shapes must be \[levels, 2\]'):
        ms_deform_attn(value, [[3, 2, 1], [1, 2, 1]], offsets, loc, attn, backend='triton')


def test_autograd_only_when_needed():
    """Without autograd the kernel runs without an autograd.Function; with it, the eager path is the plain
    Function (the custom op is for torch.compile)."""
    value, shapes, starts, loc, attn = _leaves(make_inputs(1, 4, 2, 3, ((3, 2), (1, 2)), 2, device=kernel_device()))
    with torch.no_grad():
        assert ms_deform_attn(value, shapes, starts, loc, attn, backend='triton').grad_fn is None
    plain = [t.detach() for t in (value, loc, attn)]
    assert ms_deform_attn(plain[0], shapes, starts, plain[1], plain[2], backend='triton').grad_fn is None
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend='triton')
    assert type(out.grad_fn).__name__ == '_MSDeformAttnFnBackward'


def test_backend_choice(monkeypatch):
    value, shapes, starts, loc, attn = make_inputs(1, 2, 2, 3, ((2, 2),), 1)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    assert 'inputs are not on a CUDA device' in explain_ms_deform_attn(value, loc, attn)
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    assert explain_ms_deform_attn(value, loc, attn) == 'ms_deform_attn: triton'
    assert 'unsupported dtype torch.float64' in explain_ms_deform_attn(value.double(), loc, attn)
    with pytest.raises(BackendUnavailableError, match='head_dim 300 > 256'):
        ms_deform_attn(torch.zeros(1, 4, 1, 300), shapes, starts, loc[:, :, :1], attn[:, :, :1], backend='triton')
    # lists of level sizes work as well as tensors
    torch.testing.assert_close(ms_deform_attn(value, [[2, 2]], [0], loc, attn),
                               ms_deform_attn(value, shapes, starts, loc, attn))


def _bad_args():
    value, shapes, starts, loc, attn = make_inputs(1, 3, 2, 4, ((3, 2), (1, 2)), 2)
    return dict(value=value, spatial_shapes=shapes, level_start_index=starts, sampling_locations=loc,
                attention_weights=attn)


@pytest.mark.parametrize('bad,error,match', [
    (dict(value=torch.zeros(1, 8, 8)), ValueError, r'value must be \[batch, S, heads, head_dim\]'),
    (dict(value=torch.zeros(1, 9, 2, 4)), ValueError, r'S=9 positions but spatial_shapes \[\[3, 2\], \[1, 2\]\] '
                                                      r'give sum\(H\*W\)=8'),
    (dict(level_start_index=torch.tensor([0, 5])), ValueError, r'level_start_index \[0, 5\] is inconsistent'),
    (dict(level_start_index=torch.tensor([0])), ValueError, r'level_start_index must be \[levels=2\]'),
    (dict(spatial_shapes=torch.tensor([[3, 2], [1, 2], [1, 1]])), ValueError, 'spatial_shapes has 3 levels'),
    (dict(spatial_shapes=torch.tensor([[3., 2.], [1., 2.]])), TypeError, 'spatial_shapes must be an integer'),
    (dict(sampling_locations=torch.zeros(1, 3, 2, 2, 2)), ValueError, 'sampling_locations must be'),
    (dict(sampling_locations=torch.zeros(1, 3, 4, 2, 2, 2)), ValueError, 'heads=2 at dim 2'),
    (dict(attention_weights=torch.zeros(1, 3, 2, 2, 3)), ValueError, r'attention_weights must be .* \[1, 3, 2, 2, 2\]'),
    (dict(value=torch.zeros(1, 8, 2, 4, dtype=torch.long)), TypeError, 'value must be a floating-point'),
])
def test_bad_arguments(bad, error, match):
    args = _bad_args()
    args.update(bad)
    with pytest.raises(error, match=match):
        ms_deform_attn(**args)


# ---------------------------------------------------------------------------------------------------------------
# the layer


def _layer_inputs(batch=2, queries=5, dims=16, sizes=((4, 5), (2, 3)), box=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes, starts, total = level_tables(sizes)
    query = torch.randn(batch, queries, dims, generator=gen)
    value = torch.randn(batch, total, dims, generator=gen)
    ref = torch.rand(batch, queries, len(sizes), 4 if box else 2, generator=gen)
    return query, ref, value, shapes, starts


def _randomised(layer, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return layer


def test_layer_shapes_init_and_names():
    layer = MultiScaleDeformableAttention(16, num_heads=4, num_levels=2, num_points=3)
    assert [n for n, _ in layer.named_parameters()] == [
        'sampling_offsets.weight', 'sampling_offsets.bias', 'attention_weights.weight', 'attention_weights.bias',
        'value_proj.weight', 'value_proj.bias', 'output_proj.weight', 'output_proj.bias']
    assert layer.sampling_offsets.weight.shape == (4 * 2 * 3 * 2, 16)
    assert layer.attention_weights.weight.shape == (4 * 2 * 3, 16)
    # Deformable DETR's init: head h points along angle 2*pi*h/4 (normalised to max |component| 1), times 1..P
    offsets = layer.sampling_offsets.bias.detach().view(4, 2, 3, 2)
    directions = torch.tensor([[1., 0.], [0., 1.], [-1., 0.], [0., -1.]])
    expected = directions[:, None, None, :] * torch.tensor([1., 2., 3.])[None, None, :, None]
    torch.testing.assert_close(offsets, expected.expand(4, 2, 3, 2), atol=1e-6, rtol=0)
    assert (layer.sampling_offsets.weight == 0).all() and (layer.attention_weights.weight == 0).all()
    assert (layer.attention_weights.bias == 0).all() and (layer.value_proj.bias == 0).all()
    for inputs in (_layer_inputs(), _layer_inputs(box=True)):
        out = layer(*inputs)
        assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
    # not batch_first: [N, B, C] in and out, same numbers
    seq_layer = MultiScaleDeformableAttention(16, 4, 2, 3, batch_first=False)
    seq_layer.load_state_dict(layer.state_dict())
    query, ref, value, shapes, starts = _layer_inputs()
    torch.testing.assert_close(seq_layer(query.transpose(0, 1), ref, value.transpose(0, 1), shapes, starts),
                               layer(query, ref, value, shapes, starts).transpose(0, 1))
    with pytest.raises(ValueError, match='divisible by num_heads'):
        MultiScaleDeformableAttention(18, num_heads=4)


def test_layer_initial_sampling_points():
    """At init all L*P samples get weight 1/(L*P) and sit at reference + direction * (p+1) / (W, H) pixels."""
    layer = MultiScaleDeformableAttention(8, num_heads=2, num_levels=1, num_points=2)
    with torch.no_grad():
        layer.value_proj.weight.copy_(torch.eye(8))
        layer.output_proj.weight.copy_(torch.eye(8))
    sizes = ((6, 8),)
    shapes, starts, total = level_tables(sizes)
    value = torch.randn(1, total, 8)
    ref = torch.tensor([[[[0.5, 0.5]]]])
    out = layer(torch.randn(1, 1, 8), ref, value, shapes, starts)
    # head 0 looks along +x (1 and 2 pixels right of the reference), head 1 along -x
    loc = ref[:, :, None, :, None, :] + layer.initial_offsets()[None, None] / torch.tensor([8., 6.])
    expected = ms_deform_attn_ref(value.view(1, total, 2, 4), shapes, starts, loc, torch.full((1, 1, 2, 1, 2), 0.5))
    torch.testing.assert_close(out, expected)


def test_layer_key_padding_mask():
    layer = _randomised(MultiScaleDeformableAttention(16, num_heads=4, num_levels=2, num_points=3))
    query, ref, value, shapes, starts = _layer_inputs()
    mask = torch.zeros(2, value.shape[1], dtype=torch.bool)
    mask[1, 12:] = True
    out = layer(query, ref, value, shapes, starts, key_padding_mask=mask)
    # masking = the projected value zeroed there: changing padded inputs changes nothing
    value2 = value.clone()
    value2[1, 12:] = 100.0
    torch.testing.assert_close(layer(query, ref, value2, shapes, starts, key_padding_mask=mask), out)
    unmasked = layer(query, ref, value, shapes, starts)
    torch.testing.assert_close(unmasked[0], out[0])
    assert not torch.allclose(unmasked[1], out[1])
    # everything padded: only the output projection's bias remains
    all_masked = layer(query, ref, value, shapes, starts, key_padding_mask=torch.ones_like(mask))
    torch.testing.assert_close(all_masked, layer.output_proj.bias.expand_as(all_masked))


@pytest.mark.parametrize('box', [False, True])
def test_layer_backend_parity(box):
    layer = _randomised(MultiScaleDeformableAttention(12, num_heads=2, num_levels=2, num_points=2))
    inputs = _layer_inputs(batch=1, queries=4, dims=12, sizes=((3, 4), (2, 1)), box=box, seed=1)
    expected = layer(*inputs)
    layer.backend = 'triton'
    got = layer(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())


def test_kernel_grid_is_one_flat_axis_for_large_batches():
    # Issue 24: every program on axis 0, query blocks fastest (CUDA caps the second axis at 65535 < batch * heads).
    from visionattn.ops.triton.deformable import _Plan
    plan = _Plan(8200, 1100, 8, 32)
    assert plan.grid == (math.ceil(1100 / plan.tiles.block_m) * 8200 * 8, 1, 1)


@pytest.mark.cuda
def test_more_than_65535_batch_heads_cuda():
    _check_kernel(8200, 3, 8, 8, ((3, 4), (2, 2)), 2, torch.float32, device='cuda')


def test_non_finite_locations_give_nan_as_the_reference():
    # Adversarial probe: the kernels clamped a NaN location to a finite (zero) sample where grid_sample gives NaN,
    # hiding the NaN; an infinite one likewise.
    from op_testing import kernel_device
    device = kernel_device()
    value, shapes, starts, loc, attn = make_inputs(1, 4, 2, 4, [(4, 4), (2, 2)], 2, device=device)
    loc[0, 1, 0, 0, 0, 0] = float('nan')
    loc[0, 2, 1, 1, 1, 1] = float('inf')
    ref = ms_deform_attn(value, shapes, starts, loc, attn, backend='reference')
    out = ms_deform_attn(value, shapes, starts, loc, attn, backend='triton')
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any()
    finite = ~torch.isnan(ref)
    torch.testing.assert_close(out[finite], ref[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ['reference', 'triton'])
def test_no_image_or_no_query_gives_the_empty_result(backend):
    # Adversarial probe: the Triton backend, asked for by name, refused an empty batch ('empty input') where the
    # reference and the other ops return the empty result.
    value, shapes, starts, loc, attn = make_inputs(1, 4, 2, 4, [(4, 4), (2, 2)], 2)
    for cut in (slice(0, 0), slice(None)):
        queries = slice(0, 0) if cut == slice(None) else slice(None)
        out = ms_deform_attn(value[cut], shapes, starts, loc[cut, queries], attn[cut, queries], backend=backend)
        assert out.shape == (loc[cut, queries].shape[0], loc[cut, queries].shape[1], 8)


@pytest.mark.parametrize('backend', ['reference', 'triton'])
def test_no_head_channel_point_or_level_gives_the_reference_result(backend):
    # Adversarial probe: no level failed inside the reference ('stack expects a non-empty TensorList'), and the
    # Triton backend by name refused no head, no channel or no point ('empty input') where the reference sums
    # nothing: zeros, with gradients flowing as the reference's.
    value, shapes, starts, loc, attn = make_inputs(2, 3, 2, 4, [(3, 2), (1, 2)], 2)
    none = torch.zeros(0, dtype=torch.long)
    cases = {
        'no head': (value[:, :, :0], shapes, starts, loc[:, :, :0], attn[:, :, :0], 0),
        'no channel': (value[..., :0], shapes, starts, loc, attn, 0),
        'no point': (value, shapes, starts, loc[..., :0, :], attn[..., :0], 8),
        'no level': (value[:, :0], none.view(0, 2), none, loc[:, :, :, :0], attn[:, :, :, :0], 8),
    }
    for name, (v, s, i, lo, a, width) in cases.items():
        v, lo, a = (t.clone().requires_grad_() for t in (v, lo, a))
        out = ms_deform_attn(v, s, i, lo, a, backend=backend)
        assert out.shape == (2, 3, width) and not out.any(), name
        out.sum().backward()
        assert v.grad.shape == v.shape and a.grad.shape == a.shape and not a.grad.any(), name
    out = ms_deform_attn(value[:, :0], [], [], loc[:, :, :, :0], attn[:, :, :, :0], backend=backend)
    assert out.shape == (2, 3, 8) and not out.any()


def test_level_lists_with_fractional_sizes_are_refused():
    # Adversarial probe: a table given as lists was read through int(), so a size 3.5 ran as 3 and a start 6.7 as
    # 6 (a silent wrong table); a NaN start failed in int() with Python's conversion error.
    value, _, _, loc, attn = make_inputs(1, 3, 2, 4, [(3, 2), (1, 2)], 2)
    for sizes, starts, match in (([[3.5, 2], [1, 2]], [0, 6], 'spatial_shapes must hold whole numbers'),
                                 ([[3, 2], [1, 2]], [0, 6.7], 'level_start_index must hold whole numbers'),
                                 ([[3, 2], [1, 2]], [0, float('nan')], 'level_start_index must hold whole numbers'),
                                 ([[3, 2], [1, 2]], [[0], [6]], 'level_start_index must hold whole numbers')):
        with pytest.raises(ValueError, match=match):
            ms_deform_attn(value, sizes, starts, loc, attn)
    # whole floats and NumPy integers are the sizes they hold
    np = pytest.importorskip('numpy')
    torch.testing.assert_close(ms_deform_attn(value, [[3.0, 2.0], np.array([1, 2])], np.array([0, 6]), loc, attn),
                               ms_deform_attn(value, [[3, 2], [1, 2]], [0, 6], loc, attn))


def test_layer_refuses_no_head_level_or_point():
    # Adversarial probe: num_heads=0 failed in Python's modulo (ZeroDivisionError)
    for kwargs, match in ((dict(num_heads=0), 'num_heads'), (dict(num_levels=0), 'num_levels'),
                          (dict(num_points=-1), 'num_points'), (dict(num_heads=2.0), 'num_heads')):
        with pytest.raises(ValueError, match=match):
            MultiScaleDeformableAttention(16, **kwargs)
