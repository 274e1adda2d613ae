"""The LayerNorm op (Triton forward, PyTorch's backward on its statistics) against F.layer_norm, and when the automatic
choice takes it."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from op_testing import assert_kernel_close, grads, leaf_copies

from visionattn.layers import LayerNorm
from visionattn.ops import BackendUnavailableError, layer_norm

pytestmark = pytest.mark.ops

CASES = [  # input shape, affine (weight, bias)
    ((2, 5, 7, 64), (True, True)),  # NHWC rows of BiFormer's first stage width
    ((3, 48), (True, False)),  # features not a power of two, no bias
    ((2, 3, 130), (False, False)),  # no affine parameters, rows wider than a power of two
    ((1, 300, 16), (True, True)),  # more rows than one tile
]


def _problem(shape, affine, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = 3 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5
    weight = 1 + 0.2 * torch.randn(n, generator=gen, dtype=torch.float64) if affine[0] else None
    bias = 0.2 * torch.randn(n, generator=gen, dtype=torch.float64) if affine[1] else None
    return [None if t is None else t.requires_grad_() for t in (x, weight, bias)]


@pytest.mark.parametrize('shape, affine', CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_kernel_matches_reference(shape, affine, dtype):
    x, weight, bias = _problem(shape, affine)
    n = shape[-1]
    kernel_in, same_in = leaf_copies([x, weight, bias], dtype), leaf_copies([x, weight, bias], dtype)
    ref_in = leaf_copies([x, weight, bias], torch.float64)
    out = layer_norm(kernel_in[0], n, kernel_in[1], kernel_in[2], 1e-6, backend='triton')
    same = F.layer_norm(same_in[0], (n,), *same_in[1:], 1e-6)
    ref = F.layer_norm(ref_in[0], (n,), *ref_in[1:], 1e-6)
    assert out.dtype == same.dtype == dtype
    assert_kernel_close(out, same, ref, f'out {shape} {dtype}')
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_kernel = grads(out, kernel_in, grad_out.to(dtype))
    g_same = grads(same, same_in, grad_out.to(dtype))
    g_ref = grads(ref, ref_in, grad_out)
    assert g_kernel.keys() == g_ref.keys()
    for i in g_ref:
        assert g_kernel[i].dtype == kernel_in[i].dtype
        # the parameter gradients sum over every row: compare them relative to their size
        atol = None if i == 0 else 1e-5 * max(1.0, g_ref[i].abs().max().item())
        assert_kernel_close(g_kernel[i], g_same[i], g_ref[i], f'grad {i} {shape} {dtype}', atol=atol)


def test_strided_input_no_grad_and_partial_gradients():
    # An NHWC view of an NCHW tensor (not row-major: copied to rows), a no-grad call, and gradients of x alone and of
    # the weight alone.
    nchw = torch.randn(2, 24, 3, 5)
    x = nchw.permute(0, 2, 3, 1)
    norm = nn.LayerNorm(24)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    expected = norm(x)
    with torch.no_grad():
        torch.testing.assert_close(layer_norm(x, 24, norm.weight, norm.bias, backend='triton'), expected)
    leaf = x.detach().requires_grad_()
    (dx,) = torch.autograd.grad(layer_norm(leaf, 24, norm.weight.detach(), norm.bias.detach(), backend='triton').sum(),
                                [leaf])
    (want,) = torch.autograd.grad(F.layer_norm(leaf, (24,), norm.weight.detach(), norm.bias.detach()).sum(), [leaf])
    torch.testing.assert_close(dx, want, rtol=1e-5, atol=1e-5)
    (dw,) = torch.autograd.grad(layer_norm(x, 24, norm.weight, norm.bias, backend='triton').square().sum(),
                                [norm.weight])
    (want,) = torch.autograd.grad(norm(x).square().sum(), [norm.weight])
    torch.testing.assert_close(dw, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('backend', ['triton', None])
def test_mixed_dtypes_match_pytorchs_op(backend):
    # A bfloat16 input with float32 parameters (BiFormer's residual stream under autocast): the kernel reads each in
    # its dtype, computes in float32 and writes PyTorch's output dtype (the input's on the CPU); the backward runs in
    # float32 and each gradient takes its input's dtype. It raised "share one dtype" before.
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 5, 32, generator=gen)).bfloat16().requires_grad_()
    weight = (1 + 0.2 * torch.randn(32, generator=gen)).requires_grad_()
    bias = (0.2 * torch.randn(32, generator=gen)).requires_grad_()
    out = layer_norm(x, 32, weight, bias, backend=backend)
    want = F.layer_norm(x, (32,), weight, bias)
    assert out.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(out, want, rtol=1e-2, atol=2e-2)
    grad_out = torch.randn(out.shape, generator=gen).bfloat16()
    got, expected = torch.autograd.grad(out, [x, weight, bias], grad_out), \
        torch.autograd.grad(want, [x, weight, bias], grad_out)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=2e-2, atol=5e-2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        same = layer_norm(x.detach(), 32, weight.bfloat16(), bias.bfloat16(), backend='triton')
        want = F.layer_norm(x.detach(), (32,), weight.bfloat16(), bias.bfloat16())
    assert same.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(same, want, rtol=1e-2, atol=2e-2)


def test_kernel_writes_float32_from_a_bfloat16_input():
    # What CUDA autocast asks of the kernel (its layer_norm upcasts to float32): a bfloat16 input read as it is and a
    # float32 output, equal to PyTorch's op on the upcast input. The CPU's autocast does not upcast, so the kernel is
    # called directly here; test_autocast_upcast_cuda checks the op on a GPU.
    from op_testing import kernel_device

    from visionattn.ops.triton.layer_norm import layer_norm_fwd
    device = kernel_device()
    gen = torch.Generator().manual_seed(3)
    x = (2 * torch.randn(37, 64, generator=gen) + 1).bfloat16().to(device)
    weight, bias = (1 + 0.1 * torch.randn(64, generator=gen)).to(device), torch.randn(64, generator=gen).to(device)
    y, mean, rstd = layer_norm_fwd(x, weight, bias, 1e-6, torch.float32, True)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, F.layer_norm(x.float(), (64,), weight, bias, 1e-6), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, x.float().mean(1), rtol=1e-5, atol=1e-5)


def test_empty_batch_and_backend_choice():
    x = torch.randn(0, 7, 16, requires_grad=True)
    weight = torch.ones(16, requires_grad=True)
    out = layer_norm(x, 16, weight, None, backend='triton')
    assert out.shape == (0, 7, 16)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(weight.grad, torch.zeros(16))
    with pytest.raises(BackendUnavailableError, match='5000 features > 4096'):
        layer_norm(torch.randn(2, 5000), 5000, backend='triton')
    with pytest.raises(ValueError, match='normalizes the last axis only'):
        layer_norm(torch.randn(2, 3, 4), (3, 4), backend='triton')
    with pytest.raises(RuntimeError, match='expected input with shape'):  # PyTorch's own error on the reference path
        layer_norm(torch.randn(2, 3), 4)


def test_automatic_choice_runs_the_kernel_only_for_large_no_grad_calls(monkeypatch):
    # The choice a CUDA tensor gets, simulated on the CPU (the kernel under the interpreter): a no-grad call of at
    # least AUTO_MIN_ROWS rows runs the kernel; smaller calls and calls that need a gradient run PyTorch's op, unless
    # 'triton' is named.
    import sys
    module = sys.modules['visionattn.ops.layer_norm']  # the package's attribute of that name is the function
    from visionattn.ops.triton import layer_norm as kernels
    launched, real = [], kernels.layer_norm_fwd
    monkeypatch.setattr(kernels, 'layer_norm_fwd', lambda rows, *rest: launched.append(rows.shape[0]) or
                        real(rows, *rest))
    monkeypatch.setattr(module, '_choose', lambda *args: ('triton', (torch.float32, torch.float32)))
    monkeypatch.setattr(module, '_CHOICES', {})
    monkeypatch.setattr(module, 'AUTO_MIN_ROWS', 12)
    weight, bias = torch.randn(16), torch.randn(16)
    small, large = torch.randn(2, 5, 16), torch.randn(3, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer_norm(small, 16, weight, bias), F.layer_norm(small, (16,), weight, bias))
        assert launched == []
        torch.testing.assert_close(layer_norm(large, 16, weight, bias), F.layer_norm(large, (16,), weight, bias))
        assert launched == [12]
    out = layer_norm(large.requires_grad_(), 16, weight, bias)
    assert type(out.grad_fn).__name__ == 'NativeLayerNormBackward0' and launched == [12]
    out = layer_norm(small.requires_grad_(), 16, weight, bias, backend='triton')
    assert type(out.grad_fn).__name__ == '_LayerNormFnBackward' and launched == [12, 10]
    monkeypatch.setenv('VISIONATTN_BACKEND', 'triton')  # the environment names it as the argument does
    out = layer_norm(small, 16, weight, bias)
    assert type(out.grad_fn).__name__ == '_LayerNormFnBackward' and launched == [12, 10, 10]


def test_layer_is_a_layernorm_with_the_same_state_and_traces():
    torch.manual_seed(0)
    ours, theirs = LayerNorm(32, eps=1e-6), nn.LayerNorm(32, eps=1e-6)
    nn.init.normal_(theirs.weight)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert isinstance(ours, nn.LayerNorm) and ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ours(x), theirs(x))
    traced = torch.fx.symbolic_trace(ours)
    torch.testing.assert_close(traced(x), theirs(x))
    torch.testing.assert_close(torch.jit.script(traced)(x), theirs(x))
    torch.testing.assert_close(torch.jit.script(ours)(x), theirs(x))


@pytest.mark.cuda
@pytest.mark.parametrize('shape', [(64, 56, 56, 64), (64, 14, 14, 256), (8, 7, 7, 512), (3, 1000, 96)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_kernel_matches_reference_cuda(shape, dtype):
    x, weight, bias = (t.detach().cuda().requires_grad_() for t in _problem(shape, (True, True)))
    n = shape[-1]
    kernel_in, same_in = leaf_copies([x, weight, bias], dtype), leaf_copies([x, weight, bias], dtype)
    ref_in = leaf_copies([x, weight, bias], torch.float64)
    out = layer_norm(kernel_in[0], n, kernel_in[1], kernel_in[2], 1e-6, backend='triton')
    assert type(out.grad_fn).__name__ == '_LayerNormFnBackward'
    same = F.layer_norm(same_in[0], (n,), *same_in[1:], 1e-6)
    ref = F.layer_norm(ref_in[0], (n,), *ref_in[1:], 1e-6)
    assert_kernel_close(out, same, ref, f'out {shape}')
    with torch.no_grad():  # the automatic choice's no-grad path (the kernel from AUTO_MIN_ROWS rows up)
        assert_kernel_close(layer_norm(kernel_in[0], n, kernel_in[1], kernel_in[2], 1e-6), same, ref,
                            f'no-grad out {shape}')
    grad_out = torch.randn(shape, dtype=torch.float64, device='cuda')
    g_kernel, g_same = grads(out, kernel_in, grad_out.to(dtype)), grads(same, same_in, grad_out.to(dtype))
    g_ref = grads(ref, ref_in, grad_out)
    for i in g_ref:
        atol = None if i == 0 else 1e-5 * g_ref[i].abs().max().item()
        assert_kernel_close(g_kernel[i], g_same[i], g_ref[i], f'grad {i} {shape}', atol=atol)


@pytest.mark.cuda
def test_autocast_upcast_cuda():
    # BiFormer's residual stream is bfloat16 under autocast, whose layer_norm upcasts it to float32: the no-grad path
    # (inference) runs the kernel on the bfloat16 input and writes float32, equal to PyTorch's op under autocast; the
    # gradient path ('triton' named) gives PyTorch's gradients in each input's dtype.
    import sys
    module = sys.modules['visionattn.ops.layer_norm']
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(64, 28, 28, 128, generator=gen)).bfloat16().cuda()
    norm = nn.LayerNorm(128, eps=1e-6).cuda()
    nn.init.normal_(norm.weight, 1, 0.2)
    nn.init.normal_(norm.bias, 0, 0.2)
    assert x.shape[:-1].numel() >= module.AUTO_MIN_ROWS
    with torch.autocast('cuda', dtype=torch.bfloat16):
        with torch.no_grad():
            got = layer_norm(x, 128, norm.weight, norm.bias, 1e-6)
            want = norm(x)
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        leaf = x.clone().requires_grad_()
        out = layer_norm(leaf, 128, norm.weight, norm.bias, 1e-6, backend='triton')
        assert type(out.grad_fn).__name__ == '_LayerNormFnBackward' and out.dtype == torch.float32
        grad_out = torch.randn(out.shape, device='cuda')
        got = torch.autograd.grad(out, [leaf, norm.weight, norm.bias], grad_out)
        want = torch.autograd.grad(norm(leaf), [leaf, norm.weight, norm.bias], grad_out)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=1e-2, atol=1e-2 * w.abs().max().item())


def test_strided_weight_and_bias_and_empty_features():
    """A strided or expanded (stride 0) weight and bias give F.layer_norm's result (the kernel read them as
    contiguous, off by up to 7e28), and zero features return F.layer_norm's empty result instead of a reshape
    error (both found by the adversarial probe)."""
    from op_testing import kernel_device
    device = kernel_device()
    x = torch.randn(6, 8, device=device)
    weight, bias = torch.randn(16, device=device)[::2], torch.randn(1, device=device).expand(8)
    assert not weight.is_contiguous() and not bias.is_contiguous()
    torch.testing.assert_close(layer_norm(x, 8, weight, bias, backend='triton'), F.layer_norm(x, (8,), weight, bias))
    leaf = weight.clone().requires_grad_()
    (got,) = torch.autograd.grad(layer_norm(x, 8, leaf[None].expand(2, 8)[0], bias, backend='triton').square().sum(),
                                 [leaf])
    (want,) = torch.autograd.grad(F.layer_norm(x, (8,), leaf, bias).square().sum(), [leaf])
    torch.testing.assert_close(got, want)
    empty = torch.randn(3, 0, device=device)
    assert layer_norm(empty, 0, backend='triton').shape == (3, 0)
