"""Differentiating an op's gradient again (a gradient penalty, ``create_graph=True``) through the Triton kernels.

Their backward passes are kernels, not differentiable PyTorch ops: a second derivative taken through them came back
as if the first-order gradients were constants, a silently wrong result (the adversarial probe found second-order
gradients of 38 against the reference's 3227 for the deformable op). Every Triton autograd path now marks its
backward first-order only (``visionattn.ops.checks.first_order_only``): the first-order gradients stay right under
``create_graph=True``, and differentiating them raises. The reference path (plain PyTorch ops) gives true second
derivatives. (strip_gate's own tests check the same of its Triton path, whose gate network needs its own parameters.)
"""
import pytest
import torch
from test_ops_block_sparse import _problem as block_sparse_problem
from test_ops_deformable import make_inputs as deformable_inputs
from test_ops_selective_scan import make_cross_inputs

from visionattn.ops import (
    bi_level_routing_attention_2d,
    block_sparse_attention,
    cross_selective_scan,
    layer_norm,
    ms_deform_attn,
    neighborhood_attention,
    selective_scan,
)

pytestmark = pytest.mark.ops


def _randn(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _neighborhood():
    q, k, v = (_randn(1, 6, 6, 2, 8, seed=i) for i in range(3))
    return [q, k, v, _randn(2, 5, 5, seed=3, scale=0.1)], \
        lambda q, k, v, rpb, backend: neighborhood_attention(q, k, v, 3, rpb=rpb, backend=backend)


def _block_sparse():
    (q, k, v), index, count = block_sparse_problem(1, 2, 2, 3, 4, 4, 2, 8, 8, dtype=torch.float32)
    return [q, k, v], lambda q, k, v, backend: block_sparse_attention(q, k, v, index, count, 4, 4, backend=backend)


def _routing_attention():
    inputs = [_randn(1, 6, 6, 48), _randn(16, 1, 5, 5, seed=1, scale=0.2), _randn(16, seed=2, scale=0.1)]
    return inputs, lambda qkv, weight, bias, backend: bi_level_routing_attention_2d(
        qkv, 2, 3, 3, 16, None, weight, bias, backend=backend)


def _deformable():
    value, shapes, starts, loc, attn = deformable_inputs(1, 3, 2, 4, ((3, 2), (1, 2)), 2)
    return [value, loc, attn], lambda value, loc, attn, backend: ms_deform_attn(value, shapes, starts, loc, attn,
                                                                                backend=backend)


def _selective_scan():
    u, delta, z = (_randn(2, 4, 5, seed=i) for i in range(3))
    A, B, C = -torch.rand(4, 3, generator=torch.Generator().manual_seed(3)), _randn(2, 2, 3, 5, seed=4), \
        _randn(2, 2, 3, 5, seed=5)
    return [u, delta, A, B, C, _randn(4, seed=6), z], lambda u, delta, A, B, C, D, z, backend: selective_scan(
        u, delta, A, B, C, D, z, delta_softplus=True, backend=backend)


def _cross_scan():
    inputs = make_cross_inputs(1, 3, 4, 4, 1)
    return inputs, lambda *args, backend: cross_selective_scan(*args, delta_softplus=True, backend=backend)


def _layer_norm():
    return [_randn(3, 5, 16), 1 + _randn(16, seed=1, scale=0.2), _randn(16, seed=2, scale=0.2)], \
        lambda x, weight, bias, backend: layer_norm(x, 16, weight, bias, backend=backend)


OPS = {
    'neighborhood_attention': _neighborhood,
    'block_sparse_attention': _block_sparse,
    'bi_level_routing_attention_2d': _routing_attention,
    'ms_deform_attn': _deformable,
    'selective_scan': _selective_scan,
    'cross_selective_scan': _cross_scan,
    'cross_selective_scan_merged': _cross_scan,  # the opt-in merged SS2D kernels (state size 1)
    'layer_norm': _layer_norm,
}


@pytest.mark.parametrize('name', list(OPS))
def test_second_derivative_through_a_kernel_raises(name, monkeypatch):
    from op_testing import kernel_device

    from visionattn.ops.triton import cross_scan
    monkeypatch.setattr(cross_scan, 'ENABLED', name.endswith('_merged'))
    tensors, op = OPS[name]()
    device = kernel_device()
    leaves = [t.to(device).requires_grad_() for t in tensors]
    plain = [t.detach().clone().requires_grad_() for t in leaves]
    out = op(*leaves, backend='triton')
    first = torch.autograd.grad(out.square().sum(), leaves, create_graph=True)
    expected = torch.autograd.grad(op(*plain, backend='triton').square().sum(), plain)
    for got, want in zip(first, expected):  # create_graph does not change the first-order gradients
        torch.testing.assert_close(got, want)
    # a gradient penalty plus the loss itself: torch's once_differentiable let torch.autograd.grad drop the penalty's
    # second-order terms here without an error
    penalty = sum(g.square().sum() for g in first) + out.sum()
    with pytest.raises(RuntimeError, match="backward gives first derivatives only; .* needs backend='reference'"):
        torch.autograd.grad(penalty, leaves)
    # the reference path is plain PyTorch: its second derivatives exist
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ref_first = torch.autograd.grad(op(*ref_leaves, backend='reference').square().sum(), ref_leaves,
                                    create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in ref_first), ref_leaves, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in second)
