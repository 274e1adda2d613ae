"""Neighborhood attention: the reference against a brute-force dense oracle, the Triton kernel (interpreter on CPU,
real sizes on a GPU) against the fp32 reference, argument errors and backend choice."""
import math

import pytest
import torch
from op_testing import assert_kernel_close, grads, leaf_copies

from visionattn.ops import neighborhood_attention
from visionattn.ops.checks import BackendUnavailableError, choose_backend
from visionattn.ops.reference.neighborhood import neighborhood_attention_ref

pytestmark = pytest.mark.ops


# ----------------------------------------------------------------------------------------------------------------
# Brute-force oracle: dense attention with an explicit boolean mask and a bias built from NATTEN's definitions.

def _oracle_axis(length, kernel, dilation, stride, causal):
    """allowed[x, y] and bias offset rel[x, y] on one axis, straight from NATTEN's per-query formulas."""
    left, right = kernel // 2, kernel // 2 + kernel % 2 - 1
    allowed = torch.zeros(length, length, dtype=torch.bool)
    rel = torch.zeros(length, length, dtype=torch.long)
    for x in range(length):
        g, p = x % dilation, x // dilation
        # Group length in NATTEN's form (qkv_fix_dilation).
        lg = length // dilation + 1 - (g + dilation - length % dilation) // dilation
        if causal:
            leader = min((p // stride) * stride + stride - 1, lg - 1)
            start, end = max(leader - left - right, 0), min(p + 1, lg)
        else:
            leader = min((p // stride) * stride + stride // 2, lg - 1)
            start = max(leader - left, 0) + (leader + right >= lg) * (lg - right - leader - 1)
            end = start + kernel
        for y in range(length):
            if y % dilation == g and start <= y // dilation < end:
                allowed[x, y] = True
                rel[x, y] = (y - x) // dilation + kernel - 1
    return allowed, rel


def oracle(q, k, v, kernel, dilation, stride, causal, rpb=None, scale=None):
    """Dense fp64 attention over all tokens with the NA mask and rpb (B, *spatial, heads, d layout)."""
    n_dim = q.dim() - 3
    spatial = q.shape[1:1 + n_dim]
    mask = torch.ones(1, 1, dtype=torch.bool)
    rel = torch.zeros(1, 1, dtype=torch.long)
    for length, kk, d, s, c in zip(spatial, kernel, dilation, stride, causal):
        a, r = _oracle_axis(length, kk, d, s, c)
        mask = (mask[:, None, :, None] & a[None, :, None, :]).flatten(2).flatten(0, 1)
        rel = (rel[:, None, :, None] * (2 * kk - 1) + r[None, :, None, :]).flatten(2).flatten(0, 1)
    batch, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    n = math.prod(spatial)
    scale = dim ** -0.5 if scale is None else scale
    qf, kf, vf = (t.double().reshape(batch, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    logits = (qf * scale) @ kf.transpose(-1, -2)
    if rpb is not None:
        logits = logits + rpb.double().reshape(heads, -1)[:, rel]
    logits = logits.masked_fill(~mask, float('-inf'))
    out = logits.softmax(-1) @ vf
    return out.transpose(1, 2).reshape(*q.shape[:-1], v.shape[-1])


def _inputs(spatial, heads=2, dim=8, dim_v=None, batch=2, rpb_kernel=None, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *spatial, heads)
    q = torch.randn(*shape, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(*shape, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(*shape, dim_v or dim, generator=gen, dtype=torch.float64)
    rpb = None
    if rpb_kernel is not None:
        rpb = torch.randn(heads, *(2 * kk - 1 for kk in rpb_kernel), generator=gen, dtype=torch.float64)
    return [t if t is None else t.to(dtype) for t in (q, k, v, rpb)]


# spatial, kernel, dilation, stride, causal, with rpb
REF_CASES = [
    ((11,), (3,), (1,), (1,), (False,), True),
    ((13,), (4,), (2,), (1,), (False,), True),
    ((17,), (5,), (3,), (2,), (False,), True),
    ((12,), (6,), (2,), (6,), (False,), True),
    ((10,), (3,), (1,), (1,), (True,), False),
    ((15,), (4,), (2,), (3,), (True,), False),
    ((7, 9), (3, 5), (1, 1), (1, 1), (False, False), True),
    ((9, 10), (4, 3), (2, 3), (1, 1), (False, False), True),
    ((11, 8), (5, 4), (2, 1), (3, 2), (False, False), True),
    ((6, 7), (3, 3), (2, 1), (1, 1), (False, False), False),
    ((8, 9), (3, 4), (1, 2), (2, 1), (True, False), False),
    ((7, 7), (7, 7), (1, 1), (1, 1), (False, False), True),
    ((5, 6, 7), (3, 2, 3), (1, 2, 2), (1, 1, 1), (False, False, False), True),
    ((6, 5, 7), (3, 3, 3), (2, 1, 1), (2, 3, 1), (False, True, False), False),
    ((4, 6, 5), (2, 3, 5), (1, 1, 1), (2, 2, 5), (True, True, True), False),
]


@pytest.mark.parametrize('spatial,kernel,dilation,stride,causal,with_rpb', REF_CASES)
def test_reference_matches_oracle(spatial, kernel, dilation, stride, causal, with_rpb):
    q, k, v, rpb = _inputs(spatial, dim_v=5, rpb_kernel=kernel if with_rpb else None, dtype=torch.float64)
    want = oracle(q, k, v, kernel, dilation, stride, causal, rpb, scale=0.3)
    got = neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb=rpb, scale=0.3, backend='reference')
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_gradients_match_oracle():
    spatial, kernel, dilation, stride = (7, 8), (3, 4), (2, 1), (1, 2)
    inputs = [t.requires_grad_() for t in _inputs(spatial, rpb_kernel=kernel, dtype=torch.float64)]
    grad_out = torch.randn(*inputs[0].shape, dtype=torch.float64)
    ref = neighborhood_attention_ref(*inputs[:3], kernel, dilation, stride, (False, False), rpb=inputs[3])
    want = oracle(*inputs[:3], kernel, dilation, stride, (False, False), inputs[3])
    for i, (a, b) in enumerate(zip(grads(ref, inputs, grad_out).values(), grads(want, inputs, grad_out).values())):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f'gradient {i}')


def test_reference_chunks_queries(monkeypatch):
    import visionattn.ops.reference.neighborhood as reference
    q, k, v, rpb = _inputs((9, 7), rpb_kernel=(3, 3), dtype=torch.float64)
    whole = neighborhood_attention_ref(q, k, v, 3, 2, rpb=rpb)
    monkeypatch.setattr(reference, '_CHUNK_BYTES', 1)  # one query per chunk
    torch.testing.assert_close(neighborhood_attention_ref(q, k, v, 3, 2, rpb=rpb), whole, rtol=0, atol=1e-12)


def test_reference_counts_true_flops():
    from torch.utils.flop_counter import FlopCounterMode
    batch, spatial, heads, dim, kernel = 2, (9, 11), 3, 8, 5
    q, k, v, _ = _inputs(spatial, heads=heads, dim=dim, batch=batch)
    with FlopCounterMode(display=False) as counter:
        neighborhood_attention(q, k, v, kernel, backend='reference')
    # 2 FLOPs per multiply-add, QK^T and AV: each B * heads * N * k^2 * d multiply-adds.
    assert counter.get_total_flops() == 2 * 2 * batch * heads * math.prod(spatial) * kernel ** 2 * dim


def test_reference_on_meta_device():
    q = torch.empty(1, 14, 14, 2, 32, device='meta')
    out = neighborhood_attention(q, q, q, 7, rpb=torch.empty(2, 13, 13, device='meta'))
    assert out.shape == q.shape and out.device.type == 'meta'


def test_reference_trains_after_a_first_call_in_inference_mode():
    # The neighbour tables are cached per problem: one first built under inference_mode (a benchmark, an
    # evaluation before training) must still serve a later training step. Found by tools/benchmark.py on nat_tiny.
    q, k, v = (torch.randn(1, 9, 11, 2, 4) for _ in range(3))
    with torch.inference_mode():
        neighborhood_attention(q, k, v, 3, dilation=(2, 3), backend='reference')
    for t in (q, k, v):
        t.requires_grad_()
    neighborhood_attention(q, k, v, 3, dilation=(2, 3), backend='reference').sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))


def test_reference_accepts_views_of_fused_qkv():
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 10, 3, 2, 8)
    q, k, v = qkv.unbind(3)
    want = oracle(q, k, v, (3, 3), (1, 1), (1, 1), (False, False))
    torch.testing.assert_close(neighborhood_attention(q, k, v, 3).double(), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Argument errors.

@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=9), 'too small'),
    (dict(kernel_size=3, dilation=3), 'too small'),
    (dict(kernel_size=3, stride=4), 'stride'),
    (dict(kernel_size=1), 'kernel_size'),
    (dict(kernel_size=(3, 3, 3)), 'one per spatial axis'),
    (dict(kernel_size=3, dilation=0), 'dilation'),
    (dict(kernel_size=3, is_causal=1), 'is_causal'),
    (dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)), 'rpb shape'),
    (dict(kernel_size=3, rpb=torch.zeros(2, 5, 5), is_causal=True), 'causal'),
    (dict(kernel_size=3, scale=float('nan')), 'scale'),
])
def test_bad_arguments_raise(kwargs, match):
    q = torch.randn(1, 8, 7, 2, 4)
    with pytest.raises(ValueError, match=match):
        neighborhood_attention(q, q, q, **kwargs)


def test_rpb_with_a_causal_axis_is_not_supported_as_in_natten():
    # a ValueError as every argument check, and the NotImplementedError NATTEN raises (the NATTEN drop-in keeps it)
    q = torch.randn(1, 8, 7, 2, 4)
    with pytest.raises(NotImplementedError, match='causal'):
        neighborhood_attention(q, q, q, 3, is_causal=(True, False), rpb=torch.zeros(2, 5, 5))


def test_bad_shapes_raise():
    q = torch.randn(1, 8, 7, 2, 4)
    with pytest.raises(ValueError, match='k shape'):
        neighborhood_attention(q, q[:, :7], q, 3)
    with pytest.raises(ValueError, match='v shape'):
        neighborhood_attention(q, q, q[:, :, :, :1], 3)
    with pytest.raises(ValueError, match='spatial axes'):
        neighborhood_attention(q[0, 0], q[0, 0], q[0, 0], 3)
    with pytest.raises(ValueError, match='dtype'):
        neighborhood_attention(q, q, q.double(), 3)


# ----------------------------------------------------------------------------------------------------------------
# Kernel vs fp32 reference (kernel error <= 2x the same-dtype PyTorch error + atol), output and every gradient.

def _check_kernel(spatial, kernel, dilation, stride, causal, with_rpb, dtype, dim=16, dim_v=None, batch=1, heads=2,
                  device='cpu', seed=0, qkv_view=False):
    base = _inputs(spatial, heads=heads, dim=dim, dim_v=dim_v, batch=batch, rpb_kernel=kernel if with_rpb else None,
                   seed=seed)
    base = [None if t is None else t.to(device).requires_grad_() for t in base]
    grad_out = torch.randn(*base[2].shape, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    args = (kernel, dilation, stride, causal)

    def run(inputs, fn, **kwargs):
        out = fn(*inputs[:3], *args, rpb=inputs[3], **kwargs)
        return out, grads(out, inputs, grad_out.to(out.dtype))

    # fp32 is checked against fp64: against an fp32 reference the same-dtype run has zero error by construction, which
    # leaves only atol for the rounding of reductions such as the rpb gradient (a sum over every query).
    ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    ref_out, ref_grads = run(leaf_copies(base, ref_dtype), neighborhood_attention_ref,
                             upcast=ref_dtype == torch.float32)
    same_out, same_grads = run(leaf_copies(base, dtype), neighborhood_attention_ref)
    kernel_inputs = leaf_copies(base, dtype)
    if qkv_view:  # q, k, v as slices of one fused projection output, as the NAT layers pass them
        fused = torch.stack([t.detach() for t in kernel_inputs[:3]], dim=-3).requires_grad_()
        views = list(fused.unbind(-3)) + [kernel_inputs[3]]
        out = neighborhood_attention(*views[:3], *args, rpb=views[3], backend='triton')
        wanted = [fused, kernel_inputs[3]]
        got = grads(out, wanted, grad_out.to(out.dtype))
        kernel_grads = dict(zip(range(3), got[0].unbind(-3)))
        if 1 in got:
            kernel_grads[3] = got[1]
        kernel_out = out
    else:
        kernel_out, kernel_grads = run(kernel_inputs, neighborhood_attention, backend='triton')
    assert_kernel_close(kernel_out, same_out, ref_out, 'output')
    assert sorted(kernel_grads) == sorted(ref_grads)
    for i, name in enumerate(('dq', 'dk', 'dv', 'drpb')):
        if i in ref_grads:
            assert_kernel_close(kernel_grads[i], same_grads[i], ref_grads[i], name)


# Configs for the interpreter: several tiles per axis (the box logic runs) and different query/key tile shapes.
INTERPRET_TILES = {
    1: {'fwd': ((1, 1, 8), (1, 1, 16), 4, 2), 'dkdv': ((1, 1, 16), (1, 1, 8), 4, 2),
        'dq': ((1, 1, 16), (1, 1, 8), 4, 2)},
    2: {'fwd': ((1, 4, 8), (1, 8, 4), 4, 2), 'dkdv': ((1, 8, 4), (1, 4, 8), 4, 2),
        'dq': ((1, 8, 8), (1, 4, 8), 4, 2)},
    3: {'fwd': ((2, 4, 4), (4, 4, 2), 4, 2), 'dkdv': ((4, 2, 4), (2, 4, 4), 4, 2),
        'dq': ((4, 4, 4), (2, 2, 8), 4, 2)},
}

# spatial, kernel, dilation, stride, causal, rpb, dtype, heads
KERNEL_CASES = [
    ((9, 10), (3, 3), (1, 1), (1, 1), (False, False), True, torch.float32, 2),
    ((11, 9), (5, 4), (2, 1), (1, 1), (False, False), True, torch.float32, 1),
    ((9, 10), (7, 7), (1, 1), (1, 1), (False, False), True, torch.float16, 1),
    ((10, 9), (3, 5), (3, 1), (2, 3), (False, False), True, torch.float32, 1),
    ((9, 11), (4, 3), (1, 2), (4, 3), (False, False), False, torch.float16, 1),
    ((8, 9), (3, 3), (1, 1), (1, 1), (True, False), False, torch.float32, 1),
    ((9, 7), (4, 3), (2, 1), (2, 2), (True, True), False, torch.float32, 1),
    ((21,), (5,), (1,), (1,), (False,), True, torch.float32, 2),
    ((23,), (6,), (3,), (1,), (False,), True, torch.float16, 1),
    ((19,), (4,), (2,), (3,), (True,), False, torch.float32, 1),
    ((4, 5, 6), (3, 2, 3), (1, 2, 1), (1, 1, 2), (False, False, False), True, torch.float32, 2),
    ((6, 4, 5), (3, 3, 2), (2, 1, 1), (2, 3, 1), (True, False, True), False, torch.float16, 1),
]


@pytest.mark.parametrize('spatial,kernel,dilation,stride,causal,with_rpb,dtype,heads', KERNEL_CASES)
def test_kernel_matches_reference_interpreter(spatial, kernel, dilation, stride, causal, with_rpb, dtype, heads,
                                              monkeypatch):
    # bfloat16 is tested on the GPU only: the Triton interpreter's bfloat16 arithmetic is not faithful on CPU.
    from visionattn.ops.triton import neighborhood as tri
    monkeypatch.setattr(tri, 'TILE_OVERRIDE', INTERPRET_TILES)
    monkeypatch.setattr(tri, '_PLANS', {})
    _check_kernel(spatial, kernel, dilation, stride, causal, with_rpb, dtype, heads=heads)
    # small problems take rpb from per-call bias blocks (RPB_MODE 2)
    assert {plan.rpb_mode for plan in tri._PLANS.values()} == {2 if with_rpb else 0}


@pytest.mark.parametrize('spatial,kernel,dilation,stride,causal,with_rpb,dtype,heads',
                         [case for case in KERNEL_CASES if case[5]])
def test_kernel_gathers_rpb_past_the_bias_table_limit(spatial, kernel, dilation, stride, causal, with_rpb, dtype,
                                                      heads, monkeypatch):
    from visionattn.ops.triton import neighborhood as tri
    monkeypatch.setattr(tri, 'TILE_OVERRIDE', INTERPRET_TILES)
    monkeypatch.setattr(tri, '_PLANS', {})
    monkeypatch.setattr(tri, 'BIAS_TABLE_LIMIT', 0)
    _check_kernel(spatial, kernel, dilation, stride, causal, with_rpb, dtype, heads=heads)
    assert {plan.rpb_mode for plan in tri._PLANS.values()} == {1}


def test_bias_blocks_are_shared_by_tiles_with_the_same_windows():
    # NAT's stage 1 (56 x 56, k7, 8 x 8 query tiles): left border, interior and right border tiles on each axis give
    # 3 x 3 classes for 49 tiles; with dilation 8 every group is 7 x 7 and one class serves all 64 groups.
    from visionattn.ops.triton import neighborhood as tri
    q = torch.empty(1, 56, 56, 2, 32)
    for dilation, want in (((1, 1), 9), ((8, 8), 1)):
        plan = tri._Plan(q, q, q, (7, 7), dilation, (1, 1), (False, False), True)
        classes = plan.bias_tables['classes']['fwd']
        assert plan.rpb_mode == 2 and int(classes.max()) + 1 == want
        assert classes.numel() == math.prod(plan.dil3) * math.prod(plan.tiles['fwd'])


def test_kernel_odd_head_dims_and_fused_views(monkeypatch):
    from visionattn.ops.triton import neighborhood as tri
    monkeypatch.setattr(tri, 'TILE_OVERRIDE', INTERPRET_TILES)
    _check_kernel((7, 9), (3, 3), (2, 1), (1, 1), (False, False), True, torch.float32, dim=20, dim_v=12, heads=1)
    _check_kernel((7, 8), (5, 5), (1, 1), (1, 1), (False, False), True, torch.float16, dim=24, heads=1,
                  qkv_view=True)


def test_kernel_rpb_without_grad_and_no_grad_inputs(monkeypatch):
    from visionattn.ops.triton import neighborhood as tri
    monkeypatch.setattr(tri, 'TILE_OVERRIDE', INTERPRET_TILES)
    q, k, v, rpb = _inputs((8, 9), heads=1, rpb_kernel=(3, 3), dtype=torch.float32)
    q.requires_grad_()
    out = neighborhood_attention(q, k, v, 3, rpb=rpb, backend='triton')
    (dq,) = torch.autograd.grad(out, [q], torch.ones_like(out))
    ref_q = q.detach().requires_grad_()
    ref = neighborhood_attention_ref(ref_q, k, v, 3, rpb=rpb)
    (want,) = torch.autograd.grad(ref, [ref_q], torch.ones_like(ref))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dq, want, rtol=1e-4, atol=1e-5)


def test_kernel_names_a_sample_too_large_for_int32_offsets():
    # The kernels address one sample with int32 offsets: a sample spanning 2^31 elements or more gets a clear error
    # instead of wrapped offsets (a meta tensor: no memory is allocated).
    from visionattn.ops.triton.neighborhood import _plan
    big = torch.empty(2, 2 ** 13, 2 ** 13, 2, 16, device='meta')
    ok = torch.empty(2, 8, 8, 1, 16)
    with pytest.raises(ValueError, match='one sample of k spans'):
        _plan(ok, big, ok, (3, 3), (1, 1), (1, 1), (False, False), False)
    _plan(ok, ok, ok, (3, 3), (1, 1), (1, 1), (False, False), False)


def test_kernel_grid_is_one_flat_axis_for_large_batches():
    # CUDA caps grid axes 1 and 2 at 65535; DiNAT-B at batch 256 has 256 * 4 heads * 64 dilation groups = 65536
    # (head, group) pairs in stage 1, so every program index lives on axis 0.
    from visionattn.ops.triton.neighborhood import _plan
    q = torch.empty(256, 56, 56, 4, 32)
    plan = _plan(q, q, q, (7, 7), (8, 8), (1, 1), (False, False), False)
    for name in ('fwd', 'dq', 'dkdv'):
        grid = plan.grid(name)
        assert grid[1:] == (1, 1) and grid[0] == math.prod(plan.tiles[name]) * 256 * 4 * 64


def test_op_has_fake_implementation():
    from torch._subclasses.fake_tensor import FakeTensorMode

    import visionattn.ops.triton.neighborhood  # noqa: F401  (registers the op)
    with FakeTensorMode():
        q = torch.empty(2, 9, 10, 3, 16)
        v = torch.empty(2, 9, 10, 3, 24)
        out, lse = torch.ops.visionattn.na_fwd(q, q, v, None, [3, 3], [1, 1], [1, 1], [False, False], 0.25)
    assert out.shape == (2, 9, 10, 3, 24) and lse.shape == (2, 3, 90) and lse.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# Backend choice.

def test_backend_choice(monkeypatch):
    from visionattn.ops.neighborhood import na_triton_checks
    q = torch.randn(1, 8, 9, 2, 8)
    assert choose_backend('neighborhood_attention', None, [q]) == 'reference'  # auto never picks the interpreter
    monkeypatch.setenv('VISIONATTN_BACKEND', 'triton')
    assert choose_backend('neighborhood_attention', None, [q], na_triton_checks(q, q)) == 'triton'
    big = torch.randn(1, 8, 9, 2, 160)
    with pytest.raises(BackendUnavailableError, match='head_dim 160'):
        neighborhood_attention(big, big, big, 3)
    monkeypatch.setenv('VISIONATTN_BACKEND', 'reference')
    torch.testing.assert_close(neighborhood_attention(big, big, big, 3, backend=None),
                               neighborhood_attention_ref(big, big, big, 3))
    monkeypatch.setenv('VISIONATTN_BACKEND', 'cuda-please')
    with pytest.raises(ValueError, match='VISIONATTN_BACKEND'):
        neighborhood_attention(q, q, q, 3)


# ----------------------------------------------------------------------------------------------------------------
# GPU at real sizes (default tiles).

CUDA_CASES = [
    ((56, 56), (7, 7), (1, 1), (1, 1), (False, False), True, torch.bfloat16, 32, 2, 3),
    ((56, 56), (7, 7), (1, 1), (1, 1), (False, False), True, torch.float16, 32, 2, 3),
    ((28, 28), (7, 7), (4, 4), (1, 1), (False, False), True, torch.bfloat16, 32, 2, 4),
    ((14, 14), (7, 7), (2, 2), (1, 1), (False, False), True, torch.float32, 32, 2, 8),
    ((128, 128), (13, 13), (1, 1), (1, 1), (False, False), False, torch.bfloat16, 64, 1, 2),
    ((64, 64), (9, 9), (1, 1), (3, 3), (False, False), True, torch.bfloat16, 128, 1, 2),
    ((64, 48), (8, 5), (2, 1), (8, 5), (True, False), False, torch.bfloat16, 64, 1, 2),
    ((4096,), (129,), (1,), (1,), (True,), False, torch.bfloat16, 64, 1, 4),
    ((1000,), (11,), (3,), (2,), (False,), True, torch.float16, 32, 2, 2),
    ((12, 16, 20), (3, 5, 7), (2, 1, 1), (1, 2, 3), (False, False, False), True, torch.bfloat16, 32, 2, 2),
    ((8, 16, 16), (4, 5, 5), (1, 1, 1), (1, 1, 1), (True, False, False), False, torch.bfloat16, 64, 2, 2),
]


@pytest.mark.cuda
@pytest.mark.parametrize('spatial,kernel,dilation,stride,causal,with_rpb,dtype,dim,batch,heads', CUDA_CASES)
def test_kernel_matches_reference_cuda(spatial, kernel, dilation, stride, causal, with_rpb, dtype, dim, batch, heads):
    _check_kernel(spatial, kernel, dilation, stride, causal, with_rpb, dtype, dim=dim, batch=batch, heads=heads,
                  device='cuda', qkv_view=dim == 32)


@pytest.mark.cuda
def test_auto_backend_is_triton_on_cuda():
    from visionattn.ops.checks import explain_backend
    q = torch.randn(1, 14, 14, 2, 32, device='cuda', dtype=torch.bfloat16)
    assert explain_backend('neighborhood_attention', [q]) == 'neighborhood_attention: triton'
    torch.testing.assert_close(neighborhood_attention(q, q, q, 7), neighborhood_attention(q, q, q, 7, backend='triton'))


def test_custom_op_path_matches_the_eager_path(monkeypatch):
    # Eager calls use an autograd.Function; torch.compile sees the custom op torch.ops.visionattn.na_fwd. Both must
    # give the same output and gradients (the op's registered autograd formula included).
    from visionattn.ops.triton import neighborhood as tri
    monkeypatch.setattr(tri, 'TILE_OVERRIDE', INTERPRET_TILES)
    q, k, v, rpb = (t.requires_grad_() for t in _inputs((8, 9), heads=2, rpb_kernel=(3, 3), dtype=torch.float32))
    grad_out = torch.randn(*v.shape)
    eager = neighborhood_attention(q, k, v, 3, rpb=rpb, backend='triton')
    eager_grads = torch.autograd.grad(eager, [q, k, v, rpb], grad_out)
    op, _ = torch.ops.visionattn.na_fwd(q, k, v, rpb, [3, 3], [1, 1], [1, 1], [False, False], q.shape[-1] ** -0.5)
    op_grads = torch.autograd.grad(op, [q, k, v, rpb], grad_out)
    torch.testing.assert_close(op, eager)
    for got, want in zip(op_grads, eager_grads):
        torch.testing.assert_close(got, want)


@pytest.mark.cuda
def test_repeated_calls_reuse_the_compiled_kernel_correctly():
    # After the first call of a specialization, kernels launch through the compiled kernel kept in the plan
    # (launch.Kernel, one slot per plan). Later calls with new data, and with a 16-byte-misaligned view (another
    # specialization, another plan), must stay exact.
    from visionattn.ops.triton import neighborhood as tri
    for seed, misaligned in ((0, False), (1, False), (2, True), (3, True), (4, False)):
        gen = torch.Generator().manual_seed(seed)
        offset = 1 if misaligned else 0
        fused = torch.randn(2, 14, 14, 4, 3, 32 + offset, generator=gen).cuda().to(torch.bfloat16)
        q, k, v = (fused[..., i, offset:].detach().requires_grad_() for i in range(3))
        rpb = (0.1 * torch.randn(4, 13, 13, generator=gen)).cuda().requires_grad_()
        grad_out = torch.randn(2, 14, 14, 4, 32, generator=gen).cuda().to(torch.bfloat16)
        out = neighborhood_attention(q, k, v, 7, rpb=rpb, backend='triton')
        got = torch.autograd.grad(out, [q, k, v, rpb], grad_out)
        ref_inputs = [t.detach().float().requires_grad_() for t in (q, k, v, rpb)]
        ref = neighborhood_attention_ref(*ref_inputs[:3], 7, rpb=ref_inputs[3])
        want = torch.autograd.grad(ref, ref_inputs, grad_out.float())
        torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
        for name, g, w in zip(('dq', 'dk', 'dv', 'drpb'), got, want):
            err = (g.float() - w).norm() / w.norm()
            assert err < 2e-2, f'seed {seed}, misaligned {misaligned}: {name} relative error {err:.3g}'
    # aligned and misaligned pointers are two specializations: two plans, each with its own compiled handles
    plans = [plan for key, plan in tri._PLANS.items() if key[0] == q.shape and plan.rpb_mode]
    assert len({(key[-3], key[-2], key[-1]) for key, plan in tri._PLANS.items() if plan in plans}) >= 2
    assert all(plan.slots['fwd'][0] is not None for plan in plans)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_reference_half_inputs_of_large_magnitude_stay_finite(dtype):
    # Issue 21: fp16 logits of large inputs overflowed (q.k ~ 1e5 > 65504) and the softmax returned NaN on the CPU.
    gen = torch.Generator().manual_seed(0)
    q, k, v = ((300 * torch.randn(1, 9, 9, 2, 16, generator=gen)).to(dtype) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=gen).to(dtype)
    out = neighborhood_attention(q, k, v, 3, rpb=rpb)
    ref = neighborhood_attention_ref(q.float(), k.float(), v.float(), 3, rpb=rpb.float())
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize('backend', ['reference', 'triton'])
def test_a_batch_of_no_sample_gives_the_empty_output(backend):
    # Issue 21: empty batches behave alike in every family; the op itself takes them, so every caller does (layers,
    # the NATTEN drop-in). An empty spatial axis is still refused.
    q, k, v, rpb = (t.requires_grad_() for t in _inputs((6, 7), dim=8, dim_v=4, batch=0, rpb_kernel=(3, 3)))
    out = neighborhood_attention(q, k, v, 3, rpb=rpb, backend=backend)
    assert out.shape == (0, 6, 7, 2, 4)
    out.sum().backward()
    assert v.grad is not None and v.grad.shape == v.shape
    with pytest.raises(ValueError, match='empty input'):
        neighborhood_attention(*(t[:, :0] for t in _inputs((6, 7), batch=1)[:3]), 3)
