"""Selective scan: the reference against a closed-form fp64 oracle, the Triton kernels (interpreter on CPU, real sizes
on a GPU) against the fp32 reference for the output and every gradient, the cross-scan, and argument errors."""

import pytest
import torch
from op_testing import assert_kernel_close, grads, kernel_device

from visionattn.ops import cross_merge, cross_scan, cross_selective_scan, scan_orders, selective_scan
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


def _compiled_on_triton(monkeypatch, name):
    """The public function ``name`` of ``visionattn.ops.selective_scan`` under torch.compile(fullgraph=True) with
    aot_eager (which traces the backward through the fake implementations), the Triton path taken directly."""
    import importlib
    module = importlib.import_module('visionattn.ops.selective_scan')
    monkeypatch.setattr(module, 'choose_backend', lambda op, backend, tensors, extra=(): 'triton')
    torch._dynamo.reset()
    return module, torch.compile(getattr(module, name), backend='aot_eager', fullgraph=True)


@pytest.mark.parametrize('grad', [True, False])
def test_public_op_compiles_fullgraph(monkeypatch, grad):
    """The public op traces with fullgraph=True (aot_eager traces the backward through the fake implementations)
    and gives the reference's output and gradients. The automatic backend choice (ops/checks.py) is outside this
    test: the Triton path is taken directly."""
    device = kernel_device()
    inputs = _leaves(make_inputs(2, 6, 37, 3, 2, device=device))
    _, compiled = _compiled_on_triton(monkeypatch, 'selective_scan')
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
    (dict(B=torch.zeros(1, 2, 2, 8), C=torch.zeros(1, 1, 2, 8)), 'C must be shaped as B: B has 2 groups, C has 1'),
    (dict(B=torch.zeros(1, 2, 2, 8)), 'C must be shaped as B: B has 2 groups, C has 1'),  # 3-D C: one group
    # no group at all (adversarial probe: was Python's ZeroDivisionError from the divisibility check)
    (dict(B=torch.zeros(1, 0, 2, 8), C=torch.zeros(1, 0, 2, 8)), 'B has no group'),
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


# --------------------------------------------------------------------------------------------- scans along orders
CROSS_NAMES = ('x', 'delta', 'A', 'B', 'C', 'D', 'delta_bias')


def make_cross_inputs(batch, height, width, dim, n_state, with_d=True, with_bias=True, channels_first=False,
                      softplus=True, device='cpu', seed=0):
    """fp32 inputs of SS2D's scan: the map [batch, H, W, dim] (channels-last memory, or channels-first with
    ``channels_first``), per-order delta [batch, L, 4, dim] and B, C [batch, L, 4, N] at the map's positions."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)
    seq_len = height * width
    x = randn(batch, height, width, dim)
    if channels_first:
        x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    delta = randn(batch, seq_len, 4, dim) * 0.5 - 1.0 if softplus else \
        torch.rand(batch, seq_len, 4, dim, generator=gen) * 0.2
    A = -torch.exp(randn(4 * dim, n_state) * 0.5)
    B, C = randn(batch, seq_len, 4, n_state), randn(batch, seq_len, 4, n_state)
    D = randn(4 * dim) if with_d else None
    bias = randn(4 * dim) * 0.3 if with_bias else None
    return [None if t is None else t.to(device) for t in (x, delta, A, B, C, D, bias)]


def _scan_order_by_order(x, delta, A, B, C, D, bias, softplus, orders):
    """The oracle: each order's sequence gathered by explicit indexing, scanned on its own (selective_scan_ref),
    its outputs added back at their positions."""
    batch, height, width, dim = x.shape
    flat = x.reshape(batch, height * width, dim)
    y = torch.zeros_like(flat)
    for k, path in enumerate(orders):
        part = slice(k * dim, (k + 1) * dim)
        out = selective_scan_ref(flat[:, path].transpose(1, 2), delta[:, path, k].transpose(1, 2), A[part],
                                 B[:, path, k].transpose(1, 2), C[:, path, k].transpose(1, 2),
                                 None if D is None else D[part], None, None if bias is None else bias[part], softplus)
        y[:, path] += out.transpose(1, 2)
    return y.view(x.shape)


def test_scan_orders():
    height, width = 3, 4
    grid = torch.arange(height * width).view(height, width)
    cross = scan_orders(height, width, 'cross')
    assert torch.equal(cross[0], grid.flatten()) and torch.equal(cross[1], grid.t().flatten())
    assert torch.equal(cross[2], cross[0].flip(0)) and torch.equal(cross[3], cross[1].flip(0))
    snake = scan_orders(height, width, 'continuous')
    for path in snake:  # a permutation whose steps never jump: each step moves to a 4-neighbour
        assert torch.equal(path.sort().values, torch.arange(height * width))
        rows, cols = path // width, path % width
        assert ((rows.diff().abs() + cols.diff().abs()) == 1).all()
    assert snake[0, 0] == 0 and snake[1, 0] == (height - 1) * width  # top-left, bottom-left corners
    with pytest.raises(ValueError, match="'cross' or 'continuous'"):
        scan_orders(2, 2, 'zigzag')


@pytest.mark.parametrize('orders', ['cross', 'continuous'])
def test_cross_reference_matches_order_by_order_scan(orders):
    inputs = make_cross_inputs(2, 3, 5, 4, 2, seed=3)
    got = cross_selective_scan(*inputs, delta_softplus=True, orders=orders, backend='reference')
    expected = _scan_order_by_order(*inputs, True, scan_orders(3, 5, orders))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)  # fp32 both, summed in another order


def _check_cross_kernel(batch, height, width, dim, n_state, dtype, orders, with_d=True, with_bias=True,
                        softplus=True, channels_first=False, out_dtype=None, device='cpu'):
    base = make_cross_inputs(batch, height, width, dim, n_state, with_d, with_bias, channels_first, softplus, device)
    # A, D and the bias stay fp32 as in VMamba; the map and the projections take the tested dtype
    low = [None if t is None else (t.to(dtype) if i not in (2, 5, 6) else t) for i, t in enumerate(base)]
    if channels_first:  # .to() of a channels-first map keeps its memory layout only for a dtype change
        low[0] = low[0].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    ref_inputs, same_inputs, kernel_inputs = _leaves(base), _leaves(low), _leaves(low)
    kwargs = dict(delta_softplus=softplus, orders=orders, out_dtype=out_dtype)
    y_ref = cross_selective_scan(*ref_inputs, **kwargs, backend='reference')
    y_same = cross_selective_scan(*same_inputs, **kwargs, backend='reference')
    y_kernel = cross_selective_scan(*kernel_inputs, **kwargs, backend='triton')
    assert y_kernel.dtype == (out_dtype or dtype) and y_kernel.shape == (batch, height, width, dim)
    assert_kernel_close(y_kernel, y_same, y_ref, 'y')
    with torch.no_grad():  # inference: with state size 1 the merged kernels (cross_scan.py), else no saved states
        y_infer = cross_selective_scan(*kernel_inputs, **kwargs, backend='triton')
    assert y_infer.dtype == y_kernel.dtype
    assert_kernel_close(y_infer, y_same, y_ref, 'y (inference)')
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
    g_ref = grads(y_ref, ref_inputs, grad_out)
    g_same = grads(y_same, same_inputs, grad_out.to(y_same.dtype))
    g_kernel = grads(y_kernel, kernel_inputs, grad_out.to(y_kernel.dtype))
    assert g_kernel.keys() == g_ref.keys()
    for i in g_ref:
        assert g_kernel[i].dtype == kernel_inputs[i].dtype and g_kernel[i].shape == kernel_inputs[i].shape
        atol = None if dtype != torch.float32 else 1e-5 * max(1.0, g_ref[i].abs().max().item())
        assert_kernel_close(g_kernel[i], g_same[i], g_ref[i], f'grad {CROSS_NAMES[i]}', atol=atol)


CROSS_CASES = [
    # batch, H, W, dim, N, dtype, orders, with_d, with_bias, softplus, channels_first, out_dtype
    (2, 3, 5, 6, 2, torch.float32, 'cross', True, True, True, False, None),
    (1, 6, 7, 5, 1, torch.float32, 'continuous', False, False, False, True, None),  # 42 steps: 2 chunks of 32
    (1, 4, 4, 8, 1, torch.bfloat16, 'cross', True, True, True, False, torch.float32),  # VMamba's force_fp32
    (2, 1, 9, 3, 3, torch.float16, 'continuous', True, False, True, False, None),  # one row
]


@pytest.mark.parametrize('batch,height,width,dim,n_state,dtype,orders,with_d,with_bias,softplus,channels_first,'
                         'out_dtype', CROSS_CASES)
def test_cross_kernel_matches_reference(batch, height, width, dim, n_state, dtype, orders, with_d, with_bias, softplus,
                                        channels_first, out_dtype):
    _check_cross_kernel(batch, height, width, dim, n_state, dtype, orders, with_d, with_bias, softplus,
                        channels_first, out_dtype)


CROSS_CUDA_CASES = [
    # LaMamba-Tiny's first stage (56x56, d_inner 192, N=1) as SS2D runs it, and a non-square continuous map
    (2, 56, 56, 192, 1, torch.bfloat16, 'cross', True, True, True, False, torch.float32),
    (2, 24, 40, 96, 4, torch.float32, 'continuous', True, True, True, True, None),
]


@pytest.mark.cuda
@pytest.mark.parametrize('batch,height,width,dim,n_state,dtype,orders,with_d,with_bias,softplus,channels_first,'
                         'out_dtype', CROSS_CUDA_CASES)
def test_cross_kernel_matches_reference_cuda(batch, height, width, dim, n_state, dtype, orders, with_d, with_bias,
                                             softplus, channels_first, out_dtype):
    _check_cross_kernel(batch, height, width, dim, n_state, dtype, orders, with_d, with_bias, softplus,
                        channels_first, out_dtype, device='cuda')


def _low_rank(batch, seq_len, dim, rank, dtype=torch.float32, device='cpu', seed=5):
    """SS2D's step sizes as dts [batch, L, 4, R] and dt_proj [4, dim, R], around softplus' knee."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, seq_len, 4, rank, generator=gen)
    proj = torch.randn(4, dim, rank, generator=gen) * rank ** -0.5
    return low.to(device, dtype), proj.to(device)


MERGED_CASES = [
    # batch, H, W, dim, orders, low-rank steps (R), D and bias, map dtype, out_dtype, tile overrides
    (2, 4, 4, 6, 'cross', 0, True, torch.float32, None, {}),  # one tile
    (1, 8, 12, 5, 'continuous', 3, True, torch.float32, None, {}),  # a 12-column tile padded to 16
    (2, 7, 7, 3, 'continuous', 2, False, torch.bfloat16, torch.float32, {}),  # force_fp32, 7 of 8 tile rows
    (1, 8, 8, 4, 'continuous', 0, True, torch.float32, None, dict(segment_h=4, segment_w=2)),  # 2 x 4 tiles
    (1, 12, 8, 4, 'cross', 2, True, torch.float16, None, dict(segment_h=3, segment_w=4, boundary_chunk=16)),
]


@pytest.mark.parametrize('batch,height,width,dim,orders,rank,with_d,dtype,out_dtype,overrides', MERGED_CASES)
def test_merged_kernels_match_reference(monkeypatch, batch, height, width, dim, orders, rank, with_d, dtype,
                                        out_dtype, overrides):
    """State size 1 runs the merged kernels (boundary states along each order, then tiles that sum the four orders
    on chip; the adjoint likewise), with the step projection on chip or the steps read in full: output (inference
    and training) and every gradient against the reference in fp32 and in the tested dtype, over tilings where
    segments meet across tiles in both directions."""
    from visionattn.ops.triton import cross_scan
    monkeypatch.setattr(cross_scan, 'ENABLED', True)
    monkeypatch.setattr(cross_scan, 'TILE_OVERRIDES', dict(overrides))
    launches = []
    real = cross_scan._TILE_BWD.launch
    monkeypatch.setattr(cross_scan._TILE_BWD, 'launch', lambda *a: launches.append(a[3]['TILE_H']) or real(*a))
    device = kernel_device()
    x, delta, A, B, C, D, bias = make_cross_inputs(batch, height, width, dim, 1, with_d, with_d, device=device)
    proj = None
    if rank:
        delta, proj = _low_rank(batch, height * width, dim, rank, device=device)
        bias = None if bias is None else bias - 1.  # steps around softplus' knee
    base = [x, delta, A, B, C, D, bias, proj]
    low = [t.to(dtype) if i in (0, 1, 3, 4) else t for i, t in enumerate(base)]
    args = dict(delta_softplus=True, orders=orders, out_dtype=out_dtype)

    def run(t, backend):
        return cross_selective_scan(*t[:7], backend=backend, delta_proj=t[7], **args)
    ref_inputs, same_inputs, kernel_inputs = _leaves(base), _leaves(low), _leaves(low)
    y_ref, y_same, y_kernel = run(ref_inputs, 'reference'), run(same_inputs, 'reference'), run(kernel_inputs, 'triton')
    with torch.no_grad():
        y_infer = run(kernel_inputs, 'triton')
    for got, what in ((y_kernel, 'y'), (y_infer, 'y (inference)')):
        assert got.dtype == (out_dtype or dtype) and got.shape == x.shape
        assert_kernel_close(got, y_same, y_ref, what)
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(device)
    g_ref = grads(y_ref, ref_inputs, grad_out)
    g_same = grads(y_same, same_inputs, grad_out.to(y_same.dtype))
    g_kernel = grads(y_kernel, kernel_inputs, grad_out.to(y_kernel.dtype))
    assert launches, 'the merged backward did not run'
    assert g_kernel.keys() == g_ref.keys()
    for i in g_ref:
        assert g_kernel[i].dtype == kernel_inputs[i].dtype and g_kernel[i].shape == kernel_inputs[i].shape
        # plus one rounding of the gradient to its dtype (the kernels sum in fp32 and cast once)
        eps = 1e-5 if kernel_inputs[i].dtype == torch.float32 else torch.finfo(kernel_inputs[i].dtype).eps
        atol = eps * max(1.0, g_ref[i].abs().max().item())
        assert_kernel_close(g_kernel[i], g_same[i], g_ref[i], f'grad {i}', atol=atol)


def test_merged_inference_falls_back_on_a_prime_side(monkeypatch):
    """A side with no divisor from MIN_SEGMENT to MAX_SEGMENT (37, a prime) has no tiling: inference runs the orders
    one by one, with the projection as an einsum, and gives the reference's values."""
    from visionattn.ops.triton import cross_scan
    monkeypatch.setattr(cross_scan, 'ENABLED', True)
    assert cross_scan.tiling(2, 37, 4) is None and cross_scan.tiling(56, 56, 4).seg_h == 14
    monkeypatch.setattr(cross_scan._TILE, 'launch', lambda *a: pytest.fail('merged kernels on an untileable map'))
    device = kernel_device()
    x, _, A, B, C, D, bias = make_cross_inputs(1, 2, 37, 4, 1, device=device)
    delta, proj = _low_rank(1, 74, 4, 3, device=device)
    args = dict(delta_softplus=True, orders='cross', delta_proj=proj)
    with torch.no_grad():
        got = cross_selective_scan(x, delta, A, B, C, D, bias, backend='triton', **args)
    torch.testing.assert_close(got, cross_selective_scan(x, delta, A, B, C, D, bias, backend='reference', **args),
                               rtol=1e-5, atol=1e-5)


def test_low_rank_steps_train_as_the_einsum():
    """With delta_proj and autograd, the op projects the steps as SS2D does (an einsum) and runs the training
    kernels: gradients of the projections and of dt_proj equal the reference's."""
    device = kernel_device()
    x, _, A, B, C, D, bias = make_cross_inputs(2, 3, 4, 5, 1, device=device)
    low, proj = _low_rank(2, 12, 5, 2, device=device)
    inputs = _leaves([x, low, A, B, C, D, bias, proj])
    ref_inputs = _leaves(inputs)

    def run(t, backend):
        return cross_selective_scan(*t[:7], delta_softplus=True, orders='continuous', backend=backend,
                                    delta_proj=t[7])
    y, expected = run(inputs, 'triton'), run(ref_inputs, 'reference')
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(device)
    got, want = grads(y, inputs, grad_out), grads(expected, ref_inputs, grad_out)
    assert got.keys() == want.keys() and 7 in got
    for i in want:
        torch.testing.assert_close(got[i], want[i], rtol=1e-4, atol=1e-4, msg=f'grad {i}')


def test_cross_custom_ops_registration():
    kernels = _kernels()
    device = kernel_device()
    x, delta, A, B, C, D, bias = _leaves(make_cross_inputs(1, 3, 4, 4, 2, device=device))
    order = scan_orders(3, 4, 'cross', device)
    args = (x, delta, A, B, C, D, bias, order, True, torch.float32, True)
    torch.library.opcheck(kernels._cross_fwd_op, args,
                          test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))
    _, hstart = kernels._cross_fwd_op(*args)
    dy = torch.randn(x.shape, device=device)
    for D_, bias_, B_ in ((D, bias, B), (None, None, B.to(torch.bfloat16))):
        torch.library.opcheck(kernels._cross_bwd_op, (dy, x, delta, A, B_, C, D_, bias_, order, hstart, True),
                              test_utils=('test_schema', 'test_faketensor'))


def test_cross_public_op_compiles_fullgraph(monkeypatch):
    device = kernel_device()
    inputs = _leaves(make_cross_inputs(2, 3, 5, 4, 2, device=device))
    module, compiled = _compiled_on_triton(monkeypatch, 'cross_selective_scan')
    y = compiled(*inputs, delta_softplus=True, orders='continuous')
    ref_inputs = _leaves(inputs)
    expected = module.cross_selective_scan_ref(*ref_inputs, True, scan_orders(3, 5, 'continuous', device),
                                               torch.float32)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
    got, want = grads(y, inputs, grad_out), grads(expected, ref_inputs, grad_out)
    assert got.keys() == want.keys()
    for i in want:
        torch.testing.assert_close(got[i], want[i], rtol=1e-4, atol=1e-4, msg=CROSS_NAMES[i])


def test_merged_custom_ops_registration():
    """The merged kernels' custom ops (torch.compile's path): schema, fake implementations (shapes and strides of
    every output, optional inputs absent or present) and autograd registration."""
    from visionattn.ops.triton import cross_scan
    device = kernel_device()
    x, _, A, B, C, D, bias = _leaves(make_cross_inputs(1, 4, 6, 3, 1, device=device))
    low, proj = (t.requires_grad_() for t in _low_rank(1, 24, 3, 2, device=device))
    order = scan_orders(4, 6, 'continuous', device)
    for D_, bias_ in ((D, bias), (None, None)):
        args = (x, low, A, B, C, D_, bias_, proj, order, 'continuous', True, torch.float32)
        torch.library.opcheck(cross_scan._merged_fwd_op, args,
                              test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))
        _, bstate = cross_scan._merged_fwd_op(*args)
        torch.library.opcheck(cross_scan._merged_bwd_op,
                              (torch.randn(x.shape, device=device), *args[:10], True, bstate),
                              test_utils=('test_schema', 'test_faketensor'))


@pytest.mark.parametrize('orders', ['cross', 'continuous'])
def test_merged_public_op_compiles_fullgraph(monkeypatch, orders):
    """State size 1 under torch.compile(fullgraph=True): the merged kernels' custom ops in the graph, the output
    and every gradient (the step projection's included) equal to the reference."""
    from visionattn.ops.triton import cross_scan
    monkeypatch.setattr(cross_scan, 'ENABLED', True)
    called = []
    real = cross_scan.merged_forward
    monkeypatch.setattr(cross_scan, 'merged_forward', lambda *a: called.append(1) or real(*a))
    device = kernel_device()
    x, _, A, B, C, D, bias = make_cross_inputs(2, 4, 6, 3, 1, device=device)
    low, proj = _low_rank(2, 24, 3, 2, device=device)
    inputs = _leaves([x, low, A, B, C, D, bias - 1., proj])
    module, compiled = _compiled_on_triton(monkeypatch, 'cross_selective_scan')
    y = compiled(*inputs[:7], delta_softplus=True, orders=orders, delta_proj=inputs[7])
    assert called, 'the merged kernels did not run'
    ref_inputs = _leaves(inputs)
    expected = cross_selective_scan(*ref_inputs[:7], delta_softplus=True, orders=orders, backend='reference',
                                    delta_proj=ref_inputs[7])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(device)
    got, want = grads(y, inputs, grad_out), grads(expected, ref_inputs, grad_out)
    assert got.keys() == want.keys()
    for i in want:
        torch.testing.assert_close(got[i], want[i], rtol=1e-4, atol=1e-4, msg=f'grad {i}')


@pytest.mark.parametrize('bad,error,match', [
    (dict(x=torch.zeros(1, 2, 3)), ValueError, r'x as \[batch, H, W, dim\]'),
    (dict(orders='zigzag'), ValueError, 'orders must be one of'),
    (dict(delta=torch.zeros(1, 6, 4, 3)), ValueError, r'delta must be \[batch=1, H\*W=6, K=4, dim=2\]'),
    (dict(A=-torch.ones(4, 2)), ValueError, r'A must be \[K\*dim=8, N\]'),
    (dict(B=torch.zeros(1, 6, 4, 3)), ValueError, r'B must be \[batch=1, H\*W=6, K=4, N=2\]'),
    (dict(D=torch.zeros(2)), ValueError, r'D must be \[K\*dim=8\]'),
    (dict(out_dtype=torch.int32), TypeError, 'out_dtype must be a floating-point dtype'),
    (dict(delta_proj=torch.zeros(4, 3, 2)), ValueError, r'delta_proj must be \[K=4, dim=2, R\]'),
    (dict(delta_proj=torch.zeros(4, 2, 3)), ValueError,
     r'with delta_proj, delta must be \[batch=1, H\*W=6, K=4, R=3\]'),
    (dict(x=torch.zeros(1, 0, 3, 2), delta=torch.zeros(1, 0, 4, 2), B=torch.zeros(1, 0, 4, 2),
          C=torch.zeros(1, 0, 4, 2)), ValueError, 'the map is empty'),
])
def test_cross_bad_arguments(bad, error, match):
    args = dict(x=torch.zeros(1, 2, 3, 2), delta=torch.zeros(1, 6, 4, 2), A=-torch.ones(8, 2),
                B=torch.zeros(1, 6, 4, 2), C=torch.zeros(1, 6, 4, 2))
    args.update(bad)
    with pytest.raises(error, match=match):
        cross_selective_scan(**args)


def test_tile_overrides_reach_the_plans(monkeypatch):
    """A benchmark sweep sets TILE_OVERRIDES between calls of one shape: each setting must launch its own tiles (the
    plans are cached per call signature, and the overrides are part of the key)."""
    kernels = _kernels()
    inputs = make_cross_inputs(1, 5, 8, 8, 1, device=kernel_device())
    order = scan_orders(5, 8, 'cross', inputs[0].device)
    tiles = []
    real = kernels._FWD.launch
    monkeypatch.setattr(kernels._FWD, 'launch', lambda slot, grid, args, consts, *rest: tiles.append(
        (consts['BLOCK_D'], consts['CHUNK'])) or real(slot, grid, args, consts, *rest))
    outputs = []
    for chunk in (16, 32):
        monkeypatch.setattr(kernels, 'TILE_OVERRIDES', dict(chunk=chunk, tile_elements=64))
        with torch.no_grad():
            outputs.append(kernels._cross_fwd(*inputs, order, True, torch.float32, False)[0])
    assert tiles == [(4, 16), (2, 32)]
    torch.testing.assert_close(outputs[0], outputs[1])


@pytest.mark.parametrize('orders', ['cross', 'continuous'])
def test_cross_empty_batch(orders):
    """A batch of zero maps gives empty outputs and gradients on both paths (no kernel launch)."""
    x, delta, A, B, C, D, bias = _leaves(make_cross_inputs(0, 3, 4, 5, 1, device=kernel_device()))
    for backend in ('reference', 'triton'):
        y = cross_selective_scan(x, delta, A, B, C, D, bias, True, orders, backend=backend)
        assert y.shape == (0, 3, 4, 5)
        y.sum().backward()
        assert x.grad.shape == x.shape and not A.grad.abs().sum()
        x.grad = A.grad = None


def test_kernels_refuse_a_group_beyond_int32_offsets():
    """The kernels address rows and steps inside one batch element and group with int32 offsets: a map whose strides
    reach 2^31 elements within one is refused with its name, shape and strides before any launch (meta tensors: the
    check needs no memory)."""
    kernels = _kernels()
    _, delta, A, B, C, D, bias = (t.to('meta') for t in make_cross_inputs(1, 2, 2, 4, 1))
    x = torch.empty_strided((1, 2, 2, 4), (0, 2 ** 31, 2 ** 30, 1), device='meta')
    order = scan_orders(2, 2, 'cross', 'meta')
    with pytest.raises(ValueError, match=r'one batch element and group of u spans \d+ elements \(shape'):
        kernels._cross_fwd(x, delta, A, B, C, D, bias, order, True, torch.float32, False)


def test_strided_per_channel_parameters_are_read_by_their_strides():
    """A transposed A and expanded (stride 0) D and delta_bias: the kernels index these per channel, unstrided, and
    read the wrong values unless the op hands them over contiguous (found by the adversarial probe: off by up to
    1e32)."""
    device = kernel_device()
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 9, 3, 1, device=device)
    strided = dict(A=A.t().contiguous().t(), D=D[:1].expand(4), delta_bias=bias[:1].expand(4))
    dense = {name: t.contiguous() for name, t in strided.items()}
    assert not any(t.is_contiguous() for t in strided.values())
    args = dict(u=u, delta=delta, B=B, C=C, z=z, delta_softplus=True)
    torch.testing.assert_close(selective_scan(**args, **strided, backend='triton'),
                               selective_scan(**args, **dense, backend='reference'), rtol=1e-5, atol=1e-5)
    x, delta, A, B, C, D, bias = make_cross_inputs(1, 3, 4, 2, 2, True, True, device=device)
    strided = dict(A=A.t().contiguous().t(), D=D[:1].expand(D.shape[0]), delta_bias=bias[:1].expand(bias.shape[0]))
    dense = {name: t.contiguous() for name, t in strided.items()}
    assert not any(t.is_contiguous() for t in strided.values())
    torch.testing.assert_close(cross_selective_scan(x, delta, B=B, C=C, **strided, backend='triton'),
                               cross_selective_scan(x, delta, B=B, C=C, **dense, backend='reference'),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ['reference', 'triton'])
def test_last_state_carries_no_gradient_on_either_path(backend):
    # Adversarial probe: the reference path's last state had a gradient while the kernels' (and mamba-ssm's) has none,
    # so a loss on it trained on the CPU and silently did nothing on the GPU. Both now return it detached.
    from op_testing import kernel_device
    inputs = _leaves([None if t is None else t.to(kernel_device()) for t in make_inputs(1, 4, 9, 2, 1)])
    y, last = selective_scan(*inputs, delta_softplus=True, return_last_state=True, backend=backend)
    assert y.requires_grad and not last.requires_grad and last.grad_fn is None
    _, want = selective_scan_ref(*[None if t is None else t.detach() for t in inputs], delta_softplus=True,
                                 return_last_state=True)
    torch.testing.assert_close(last, want, rtol=1e-4, atol=1e-5)
