"""Selective scan: the reference against a closed-form fp64 oracle, the Triton kernels (interpreter on CPU, real sizes
on a GPU) against the fp32 reference for the output and every gradient, the cross-scan, and argument errors."""

import pytest
import torch
from op_testing import assert_kernel_close, grads, kernel_device

from visionattn.ops import cross_merge, cross_scan, selective_scan
from visionattn.ops.reference.selective_scan import selective_scan_ref

pytestmark = pytest.mark.ops

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def make_inputs(batch, dim, seq_len, n_state, groups, with_d=True, with_z=True, with_bias=True, softplus=True,
                device='cpu', seed=0):
    """fp32 inputs in the ranges Mamba uses: A = -exp(A_log) < 0, delta around softplus' knee (or positive)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)
    u = randn(batch, dim, seq_len)
    delta = randn(batch, dim, seq_len) * 0.5 - 1.0 if softplus else torch.rand(batch, dim, seq_len, generator=gen) * 0.2
    A = -torch.exp(randn(dim, n_state) * 0.5)
    B, C = randn(batch, groups, n_state, seq_len), randn(batch, groups, n_state, seq_len)
    D = randn(dim) if with_d else None
    z = randn(batch, dim, seq_len) if with_z else None
    bias = randn(dim) * 0.3 if with_bias else None
    return [None if t is None else t.to(device) for t in (u, delta, A, B, C, D, z, bias)]


def test_reference_matches_closed_form():
    """h_t = sum_{s<=t} prod_{r=s+1..t} a_r * b_s, in fp64 with explicit products, against the step-by-step scan."""
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 11, 3, 2)
    y = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    dt = torch.nn.functional.softplus(delta.double() + bias.double()[:, None])
    Bx, Cx = (t.double().repeat_interleave(2, dim=1) for t in (B, C))  # 4 channels over 2 groups
    expected = torch.zeros_like(dt)
    for t in range(11):
        for s in range(t + 1):
            decay = torch.exp(dt[:, :, s + 1:t + 1].sum(-1, keepdim=True) * A.double()[None])  # [b, d, N]
            expected[:, :, t] += (decay * dt[:, :, s, None] * Bx[..., s] * u.double()[:, :, s, None]
                                  * Cx[..., t]).sum(-1)
    expected = (expected + D.double()[:, None] * u.double()) * torch.nn.functional.silu(z.double())
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)


def _check_kernel(batch, dim, seq_len, n_state, groups, dtype, with_d=True, with_z=True, with_bias=True,
                  softplus=True, ungrouped=False, device='cpu'):
    base = make_inputs(batch, dim, seq_len, n_state, groups, with_d, with_z, with_bias, softplus, device)
    if ungrouped:  # B and C as [batch, N, L]
        base[3], base[4] = base[3][:, 0], base[4][:, 0]
    # A, D and the bias stay fp32 as in Mamba; the activations take the tested dtype
    low = [None if t is None else (t.to(dtype) if i not in (2, 5, 7) else t) for i, t in enumerate(base)]
    ref_inputs, same_inputs, kernel_inputs = _leaves(base), _leaves(low), _leaves(low)
    kwargs = dict(delta_softplus=softplus, return_last_state=True)
    y_ref, last_ref = selective_scan_ref(*ref_inputs, **kwargs)
    y_same, last_same = selective_scan_ref(*same_inputs, **kwargs)
    y_kernel, last_kernel = selective_scan(*kernel_inputs, backend='triton', **kwargs)
    assert y_kernel.dtype == dtype and y_kernel.shape == (batch, dim, seq_len)
    assert_kernel_close(y_kernel, y_same, y_ref, 'y')
    assert_kernel_close(last_kernel, last_same, last_ref, 'last state')
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
    g_ref = grads(y_ref, ref_inputs, grad_out)
    g_same = grads(y_same, same_inputs, grad_out.to(dtype))
    g_kernel = grads(y_kernel, kernel_inputs, grad_out.to(dtype))
    assert g_kernel.keys() == g_ref.keys()
    for i in g_ref:
        assert g_kernel[i].dtype == kernel_inputs[i].dtype, NAMES[i]
        # gradients of A, B, C, D and the bias are sums over many steps: scale atol with their size
        atol = None if dtype != torch.float32 else 1e-5 * max(1.0, g_ref[i].abs().max().item())
        assert_kernel_close(g_kernel[i], g_same[i], g_ref[i], f'grad {NAMES[i]}', atol=atol)


def _leaves(tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


KERNEL_CASES = [
    # batch, dim, L, N, groups, dtype, with_d, with_z, with_bias, softplus, ungrouped
    (2, 6, 37, 3, 2, torch.float32, True, True, True, True, False),
    (1, 5, 130, 1, 1, torch.float32, False, False, False, False, True),  # d_state 1 (LaMamba), 3 chunks
    (2, 4, 1, 16, 4, torch.float32, True, False, True, True, False),  # one step, VMamba's d_state 16
    (1, 8, 70, 4, 4, torch.bfloat16, True, True, False, True, False),
    (1, 3, 19, 2, 1, torch.float16, False, True, True, True, False),
]


@pytest.mark.parametrize('batch,dim,seq_len,n_state,groups,dtype,with_d,with_z,with_bias,softplus,ungrouped',
                         KERNEL_CASES)
def test_kernel_matches_reference(batch, dim, seq_len, n_state, groups, dtype, with_d, with_z, with_bias, softplus,
                                  ungrouped):
    _check_kernel(batch, dim, seq_len, n_state, groups, dtype, with_d, with_z, with_bias, softplus, ungrouped)


CUDA_CASES = [
    # SS2D of a LaMamba/VMamba stage: 4 directions as groups, d_inner 192 per direction, 56x56 tokens
    (2, 4 * 192, 56 * 56, 1, 4, torch.bfloat16, True, False, True, True, False),
    (2, 4 * 192, 28 * 28, 16, 4, torch.float32, True, False, True, True, False),
    (2, 160, 1000, 16, 1, torch.float16, True, True, True, True, True),  # Mamba block: one group, gate z
    (3, 77, 513, 5, 7, torch.bfloat16, False, True, False, False, False),
]


@pytest.mark.cuda
@pytest.mark.parametrize('batch,dim,seq_len,n_state,groups,dtype,with_d,with_z,with_bias,softplus,ungrouped',
                         CUDA_CASES)
def test_kernel_matches_reference_cuda(batch, dim, seq_len, n_state, groups, dtype, with_d, with_z, with_bias,
                                       softplus, ungrouped):
    _check_kernel(batch, dim, seq_len, n_state, groups, dtype, with_d, with_z, with_bias, softplus, ungrouped,
                  device='cuda')


def test_strided_inputs_and_no_grad():
    """Views with odd strides (a slice of a projection's output, as SS2D makes them) give the same result."""
    u, delta, A, B, C, D, z, bias = make_inputs(1, 6, 21, 2, 3)
    packed = torch.cat((u, delta), dim=1).transpose(1, 2).contiguous().transpose(1, 2)  # stride 1 on channels
    u_view, delta_view = packed[:, :6], packed[:, 6:]
    expected = selective_scan_ref(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    with torch.no_grad():
        got = selective_scan(u_view, delta_view, A, B.transpose(2, 3).contiguous().transpose(2, 3), C, D, z, bias,
                             delta_softplus=True, backend='triton')
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _kernels():
    """The kernels' module (``visionattn.ops.selective_scan`` the attribute is the function, not the module)."""
    import importlib
    return importlib.import_module('visionattn.ops.triton.selective_scan')


@pytest.mark.parametrize('save_states', [True, False])
def test_custom_ops_registration(save_states):
    """The custom ops' schemas, fake (meta) implementations and autograd registration."""
    kernels = _kernels()
    u, delta, A, B, C, D, z, bias = _leaves(make_inputs(1, 4, 9, 2, 2, device=kernel_device()))
    args = (u, delta, A, B, C, D, z, bias, True, save_states)
    tests = ('test_schema', 'test_faketensor') + (('test_autograd_registration',) if save_states else ())
    torch.library.opcheck(kernels._ss_fwd_op, args, test_utils=tests)
    _, _, hstart = kernels._ss_fwd_op(*args)
    assert (hstart.numel() > 0) == save_states
    if not save_states:
        return
    dout = torch.randn(u.shape, device=u.device)
    for D_, z_, bias_, B_ in ((D, z, bias, B), (None, None, None, B.to(torch.bfloat16))):
        torch.library.opcheck(kernels._ss_bwd_op, (dout, u, delta, A, B_, C, D_, z_, bias_, hstart, True),
                              test_utils=('test_schema', 'test_faketensor'))


@pytest.mark.parametrize('grad', [True, False])
def test_public_op_compiles_fullgraph(monkeypatch, grad):
    """The public op traces with fullgraph=True (aot_eager traces the backward through the fake implementations)
    and gives the reference's output and gradients. The automatic backend choice (ops/checks.py) is outside this
    test: the Triton path is taken directly."""
    import importlib
    module = importlib.import_module('visionattn.ops.selective_scan')
    monkeypatch.setattr(module, 'choose_backend', lambda op, backend, tensors, extra=(): 'triton')
    device = kernel_device()
    inputs = _leaves(make_inputs(2, 6, 37, 3, 2, device=device))
    torch._dynamo.reset()
    compiled = torch.compile(module.selective_scan, backend='aot_eager', fullgraph=True)
    with torch.set_grad_enabled(grad):
        y = compiled(*inputs, delta_softplus=True)
    ref_inputs = _leaves(inputs)
    expected = selective_scan_ref(*ref_inputs, delta_softplus=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert (y.grad_fn is not None) == grad
    if grad:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
        got, want = grads(y, inputs, grad_out), grads(expected, ref_inputs, grad_out)
        assert got.keys() == want.keys()
        for i in want:
            torch.testing.assert_close(got[i], want[i], rtol=1e-4, atol=1e-4, msg=NAMES[i])


def test_inference_saves_no_states(monkeypatch):
    """Without autograd the forward runs without an autograd.Function and saves no chunk states."""
    kernels = _kernels()
    calls = []
    fwd = kernels._fwd
    monkeypatch.setattr(kernels, '_fwd', lambda *a, **k: calls.append(k.get('save_states', True)) or fwd(*a, **k))
    inputs = _leaves(make_inputs(1, 4, 21, 2, 2, device=kernel_device()))
    with torch.no_grad():
        y = selective_scan(*inputs, delta_softplus=True, backend='triton')
    assert y.grad_fn is None and calls == [False]
    y_grad = selective_scan(*inputs, delta_softplus=True, backend='triton')
    assert type(y_grad.grad_fn).__name__ == '_SelectiveScanFnBackward' and calls == [False, True]
    torch.testing.assert_close(y, y_grad.detach())


def test_mixed_dtype_projections():
    """B and C in different dtypes: their gradients are cast separately, each to its input's dtype."""
    device = kernel_device()
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 17, 2, 2, device=device)
    inputs = _leaves([u, delta, A, B, C.to(torch.bfloat16), D, z, bias])
    y = selective_scan(*inputs, delta_softplus=True, backend='triton')
    ref_inputs = _leaves(inputs)
    expected = selective_scan_ref(*ref_inputs, delta_softplus=True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(4)).to(device)
    got, want = grads(y, inputs, grad_out), grads(expected, ref_inputs, grad_out)
    for i in want:
        assert got[i].dtype == inputs[i].dtype, NAMES[i]
        tol = 2e-2 if got[i].dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(got[i].float(), want[i].float(), rtol=tol, atol=tol, msg=NAMES[i])


@pytest.mark.parametrize('bad,match', [
    (dict(u=torch.zeros(2, 4)), r'u must be \[batch, dim, L\]'),
    (dict(delta=torch.zeros(1, 4, 9)), 'delta must be shaped as u'),
    (dict(A=torch.zeros(3, 2)), r'A must be \[dim=4, N\]'),
    (dict(B=torch.zeros(1, 2, 3, 8)), r'B must be \[batch=1, groups, N=2, L=8\]'),
    (dict(C=torch.zeros(1, 3, 2, 8)), 'do not divide dim=4'),
    (dict(D=torch.zeros(3)), r'D must be \[dim=4\]'),
    (dict(u=torch.zeros(1, 4, 0), delta=torch.zeros(1, 4, 0), B=torch.zeros(1, 2, 0), C=torch.zeros(1, 2, 0)),
     'sequence is empty'),
])
def test_bad_arguments(bad, match):
    args = dict(u=torch.zeros(1, 4, 8), delta=torch.zeros(1, 4, 8), A=-torch.ones(4, 2), B=torch.zeros(1, 2, 8),
                C=torch.zeros(1, 2, 8), D=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan(**args)


def test_cross_scan_orders_and_merge():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5).requires_grad_()
    scans = cross_scan(x)
    assert scans.shape == (2, 4, 3, 20)
    torch.testing.assert_close(scans[:, 0], x.flatten(2))
    torch.testing.assert_close(scans[:, 1, :, 5], x[:, :, 1, 1])  # column-major: index w * H + h
    torch.testing.assert_close(scans[:, 2], x.flatten(2).flip(-1))
    torch.testing.assert_close(scans[:, 3], scans[:, 1].flip(-1))
    merged = cross_merge(scans, 4, 5)  # every direction maps back to the same token: 4x
    torch.testing.assert_close(merged, 4 * x.flatten(2))
    merged.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 4.0))
    with pytest.raises(ValueError, match='cross_merge takes'):
        cross_merge(scans, 5, 5)
