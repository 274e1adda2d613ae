"""The strip gate op (ELA's strip means and gated product on Triton kernels) against its PyTorch reference, output and
every gradient (input and the gate network's parameters), in every ELA version, layout and dtype."""
import pytest
import torch
from op_testing import assert_kernel_close, kernel_device

from visionattn.layers import ELA_VERSIONS, EfficientLocalAttention
from visionattn.ops import BackendUnavailableError, strip_gate
from visionattn.ops.reference import strip_gate_ref

pytestmark = pytest.mark.ops

SHAPES = [  # B, C, H, W; channels-last
    ((2, 32, 5, 5), False),  # square: both strips share one gate call
    ((2, 32, 6, 9), True),  # H != W: two gate calls
    ((1, 64, 3, 70), False),  # width above one power of two, fewer channels than a tile
    ((3, 96, 7, 7), True),  # channels over one block
    ((2, 32, 1, 5), False),  # a one-row map: GroupNorm and the mean over H see one position
]


def _layer(channels, version, dtype, seed=0):
    torch.manual_seed(seed)
    layer = EfficientLocalAttention(channels, version=version)
    torch.nn.init.normal_(layer.norm.weight)
    torch.nn.init.normal_(layer.norm.bias)
    return layer.to(dtype)


def _run(layer, x, grad_out, backend):
    """Output and the gradients of (out * grad_out).sum() for x and every parameter."""
    x = x.detach().requires_grad_()
    if backend is None:
        out = strip_gate_ref(x, layer._gate)
    else:
        out = strip_gate(x, layer._gate, tuple(layer.parameters()), backend=backend)
    grads = torch.autograd.grad(out, [x, *layer.parameters()], grad_out.to(out.dtype))
    return out, grads


@pytest.mark.parametrize('version', sorted(ELA_VERSIONS))
@pytest.mark.parametrize('shape, channels_last', SHAPES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_reference(version, shape, channels_last, dtype, monkeypatch):
    device = kernel_device()
    # The gate network is PyTorch's Conv1d, for which cuDNN may pick a TF32 algorithm in float32 (PyTorch's default)
    # by batch and layout: the kernel path stacks both axes' strips into one call, the reference makes two. Compared
    # here without TF32, so the test measures the kernels, not cuDNN's choice (a GPU run failed ELA-S/L fp32 so).
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    # GroupNorm of a one-position strip normalises one or two values: in bf16 the parameters' gradients are so
    # ill-conditioned there that PyTorch's own error is 5 % of their size. Output and input gradient are checked in
    # every dtype; the parameters' gradients of a one-row map in fp32 and fp16 only.
    params_conditioned = not (shape[2] == 1 and dtype == torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
    ref_layer = _layer(shape[1], version, torch.float64).to(device)
    layer = _layer(shape[1], version, dtype).to(device)
    out, grads = _run(layer, x.to(dtype), grad_out, 'triton')
    same, same_grads = _run(layer, x.to(dtype), grad_out, None)
    ref, ref_grads = _run(ref_layer, x, grad_out, None)
    assert out.dtype == dtype and out.stride() == x.stride()
    assert_kernel_close(out, same, ref, f'out {shape} {dtype}')
    for i, (g, g_same, g_ref) in enumerate(zip(grads, same_grads, ref_grads)):
        if i > 0 and not params_conditioned:
            continue
        # parameter gradients sum over the batch and the strips: their tolerance scales with their size
        atol = None if i == 0 else 2e-5 * max(1.0, g_ref.abs().max().item()) * (1 if dtype == torch.float32 else 400)
        assert g.dtype == g_same.dtype
        assert_kernel_close(g, g_same, g_ref, f'grad {i} {shape} {dtype}', atol=atol)


def test_no_grad_and_partial_gradients_take_the_same_values():
    device = kernel_device()
    layer = _layer(32, 'B', torch.float32).to(device)
    x = torch.randn(2, 32, 6, 6, device=device)
    want = strip_gate_ref(x, layer._gate)
    with torch.no_grad():
        torch.testing.assert_close(strip_gate(x, layer._gate, tuple(layer.parameters()), backend='triton'), want)
    # only x needs a gradient (a frozen layer), then only the parameters (a frozen input)
    leaf = x.clone().requires_grad_()
    frozen = _layer(32, 'B', torch.float32).to(device).requires_grad_(False)
    (dx,) = torch.autograd.grad(strip_gate(leaf, frozen._gate, (), backend='triton').square().sum(), [leaf])
    (want_dx,) = torch.autograd.grad(strip_gate_ref(leaf, frozen._gate).square().sum(), [leaf])
    torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-5)
    params = list(layer.parameters())
    got = torch.autograd.grad(strip_gate(x, layer._gate, params, backend='triton').sum(), params)
    want = torch.autograd.grad(strip_gate_ref(x, layer._gate).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_layer_runs_the_op_and_model_trains_through_it():
    # EfficientLocalAttention calls the op; with the triton backend forced, one SGD step moves its parameters as
    # PyTorch's ops do (the .sum() backward hands the kernels an expanded, stride-0 output gradient).
    device = kernel_device()
    layer = _layer(32, 'T', torch.float32).to(device)
    twin = _layer(32, 'T', torch.float32).to(device)
    x = torch.randn(2, 32, 5, 7, device=device)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('VISIONATTN_BACKEND', 'triton')
        layer(x).sum().backward()
    strip_gate_ref(x, twin._gate).sum().backward()
    for p, q in zip(layer.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


def test_bad_input_names_the_problem():
    layer = _layer(32, 'B', torch.float32)
    with pytest.raises(ValueError, match=r'\[B, C, H, W\].*\(32, 5, 5\)'):
        strip_gate(torch.randn(32, 5, 5), layer._gate)
    with pytest.raises(BackendUnavailableError, match='width 4096 > 2048'):
        strip_gate(torch.randn(1, 32, 2, 4096), layer._gate, backend='triton')
    if kernel_device() == 'cpu':
        with pytest.raises(ValueError, match='keep the strip shape'):
            strip_gate(torch.randn(1, 32, 4, 4), lambda s: s[..., :2], backend='triton')
    # the reference broadcast a gate of the wrong shape into a product (found by the adversarial probe)
    with pytest.raises(ValueError, match='keep the strip shape'):
        strip_gate(torch.randn(1, 32, 4, 4), lambda s: s[..., :1].sigmoid(), backend='reference')


def test_a_parameter_missing_from_params_is_named():
    # The Triton backward returns gradients for the tensors in params only: one the gate network uses and params
    # leaves out would lose its gradient, so the call refuses it.
    kernel_device()
    layer = _layer(32, 'B', torch.float32)
    extra = torch.ones(32, 1, requires_grad=True)
    x = torch.randn(2, 32, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r'1 tensor\(s\).*\(32, 1\)'):
        strip_gate(x, lambda s: layer._gate(s) * extra, tuple(layer.parameters()), backend='triton')
    with pytest.raises(ValueError, match=r'3 tensor\(s\)'):  # the layer's own parameters, left out
        strip_gate(x, layer._gate, (), backend='triton')
    out = strip_gate(x, lambda s: layer._gate(s) * extra, (*layer.parameters(), extra), backend='triton')
    (d_extra,) = torch.autograd.grad(out.sum(), [extra])
    (want,) = torch.autograd.grad(strip_gate_ref(x, lambda s: layer._gate(s) * extra).sum(), [extra])
    torch.testing.assert_close(d_extra, want, rtol=1e-4, atol=1e-4)


def test_automatic_choice_on_the_cpu_is_the_reference():
    layer = _layer(32, 'B', torch.float32)
    x = torch.randn(2, 32, 4, 6, requires_grad=True)
    out = strip_gate(x, layer._gate, tuple(layer.parameters()))
    assert 'StripGate' not in type(out.grad_fn).__name__
    torch.testing.assert_close(out, strip_gate_ref(x, layer._gate))
    with pytest.raises(BackendUnavailableError, match='not on a CUDA device'):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv('TRITON_INTERPRET', '0')
            strip_gate(x, layer._gate, backend='triton')


@pytest.mark.cuda
@pytest.mark.parametrize('shape', [(32, 256, 56, 56), (32, 512, 28, 28), (64, 2048, 7, 7), (4, 256, 50, 76)])
@pytest.mark.parametrize('autocast', [False, True])
def test_kernel_matches_reference_cuda(shape, autocast, monkeypatch):
    # ELA-ResNet50's stage shapes (and a detection-like H != W map), channels-last; under bf16 autocast the gates
    # come out of GroupNorm in float32 and the product keeps the input's dtype.
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)  # as in test_kernel_matches_reference
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).cuda().to(memory_format=torch.channels_last)
    grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).cuda()
    ref_layer = _layer(shape[1], 'B', torch.float64).cuda()
    layer = _layer(shape[1], 'B', torch.float32).cuda()
    dtype = torch.bfloat16 if autocast else torch.float32
    with torch.autocast('cuda', dtype=torch.bfloat16, enabled=autocast):
        out, grads = _run(layer, x.to(dtype), grad_out, 'triton')
        same, same_grads = _run(layer, x.to(dtype), grad_out, None)
    ref, ref_grads = _run(ref_layer, x, grad_out, None)
    assert out.dtype == same.dtype == dtype
    assert_kernel_close(out, same, ref, f'out {shape}')
    for i, (g, g_same, g_ref) in enumerate(zip(grads, same_grads, ref_grads)):
        atol = None if i == 0 else 2e-5 * max(1.0, g_ref.abs().max().item()) * (400 if autocast else 1)
        assert_kernel_close(g, g_same, g_ref, f'grad {i} {shape}', atol=atol)


def test_second_backward_and_integer_maps_are_named():
    """Adversarial probe: a second backward through one Triton forward (retain_graph=True, or a gradient penalty
    that backpropagates through the output again) failed with 'cannot unpack non-iterable NoneType'; an integer map
    failed inside torch.mean on the reference path without naming the op."""
    kernel_device()
    layer = _layer(32, 'B', torch.float32)
    x = torch.randn(2, 32, 4, 3, requires_grad=True)
    out = strip_gate(x, layer._gate, tuple(layer.parameters()), backend='triton')
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="strip_gate's Triton backward.*backend='reference'"):
        out.sum().backward()
    # create_graph: the first-order gradient is right, the second order refused (first_order_only), never silent
    out = strip_gate(x, layer._gate, tuple(layer.parameters()), backend='triton')
    (dx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
    (want,) = torch.autograd.grad(strip_gate_ref(x, layer._gate).square().sum(), x)
    torch.testing.assert_close(dx, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match='first derivatives only|Triton backward'):
        torch.autograd.grad(dx.square().sum() + out.sum(), x)
    for backend in ('reference', None):
        with pytest.raises(TypeError, match='strip_gate takes a floating-point map.*torch.int64'):
            strip_gate(torch.ones(1, 32, 2, 2, dtype=torch.long), layer._gate, backend=backend)
