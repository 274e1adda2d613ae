"""The NATTEN drop-in (visionattn.compat.natten): NATTEN's fused and two-step functional APIs against the NA tests'
brute-force oracle in 1-, 2- and 3-D, NATTEN 0.17's modules against the op and NAT's parameter layout, a model
written as the official NAT code is running through install(), install() never replacing a real natten, errors
naming their argument, and NATTEN's switches changing nothing.

The two-step ops' oracle lays out NATTEN's window slots independently of visionattn's neighbour table: from the NA
oracle's per-axis windows (``_oracle_axis``), slot i of an axis is the window's first key plus i dilation steps, and
slots combine row-major over the axes, as NATTEN's kernels index them.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
import math
import re
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_nat import official_keys
from test_ops_neighborhood import _inputs, _oracle_axis, oracle
from visionattn.backbones.nat import NAT

from visionattn.compat import natten
from visionattn.compat.natten import context, functional
from visionattn.layers import NeighborhoodAttention2d
from visionattn.ops import neighborhood_attention

pytestmark = pytest.mark.ops

SCALE = 0.3


# ----------------------------------------------------------------------------------------------------------------
# Oracles in NATTEN's two-step layout, built on the NA tests' per-axis windows.

def slot_table(spatial, kernel, dilation, stride, causal):
    """[N, K] flat key of every query's window slots (-1 where masked) and their flat rpb index, row-major."""
    axes = []
    for length, k, d, s, c in zip(spatial, kernel, dilation, stride, causal):
        allowed, rel = _oracle_axis(length, k, d, s, c)
        keys = torch.full((length, k), -1)
        offsets = torch.zeros(length, k, dtype=torch.long)
        for x in range(length):
            first = int(allowed[x].nonzero().min())
            for i in range(k):
                y = first + i * d
                if y < length and allowed[x, y]:
                    keys[x, i], offsets[x, i] = y, rel[x, y]
        axes.append((keys, offsets))
    n, n_keys = math.prod(spatial), math.prod(kernel)
    flat_keys = torch.full((n, n_keys), -1)
    flat_rel = torch.zeros(n, n_keys, dtype=torch.long)
    for query, coords in enumerate(itertools.product(*map(range, spatial))):
        for slot, window in enumerate(itertools.product(*map(range, kernel))):
            keys = [int(axes[a][0][coords[a], window[a]]) for a in range(len(spatial))]
            if min(keys) >= 0:
                rel = [int(axes[a][1][coords[a], window[a]]) for a in range(len(spatial))]
                flat_keys[query, slot] = sum(y * math.prod(spatial[a + 1:]) for a, y in enumerate(keys))
                flat_rel[query, slot] = sum(r * math.prod(2 * k - 1 for k in kernel[a + 1:]) for a, r in enumerate(rel))
    return flat_keys, flat_rel


def oracle_qk(query, key, rpb, kernel, dilation, causal, stride=None):
    """NATTEN's QK on heads-first [B, H, *spatial, D]: q . k + rpb per window slot, -inf in masked slots."""
    heads, spatial = query.shape[1], tuple(query.shape[2:-1])
    keys, rel = slot_table(spatial, kernel, dilation, stride or (1,) * len(spatial), causal)
    q, k = query.flatten(2, -2), key.flatten(2, -2)
    logits = (q[:, :, :, None] * k[:, :, keys.clamp(min=0)]).sum(-1)
    if rpb is not None:
        logits = logits + rpb.reshape(heads, -1)[:, rel]
    return logits.masked_fill(keys < 0, float('-inf')).unflatten(2, spatial)


def oracle_av(attn, value, kernel, dilation, causal, stride=None):
    """NATTEN's AV on heads-first tensors: the weighted sum of each query's window slots (masked slots skipped)."""
    spatial = tuple(value.shape[2:-1])
    keys, _ = slot_table(spatial, kernel, dilation, stride or (1,) * len(spatial), causal)
    weights = attn.flatten(2, -2)[..., :keys.shape[1]].masked_fill(keys < 0, 0)
    out = (weights[..., None] * value.flatten(2, -2)[:, :, keys.clamp(min=0)]).sum(-2)
    return out.unflatten(2, spatial)


def oracle_fused(q, k, v, kernel, dilation, stride, causal, rpb, scale, add_k=None, add_v=None):
    """Heads-last NA whose softmax also spans additional tokens (never masked); returns (out, lse)."""
    qh, kh, vh = (t.movedim(-2, 1) for t in (q, k, v))
    logits = oracle_qk(qh * scale, kh, rpb, kernel, dilation, causal, stride).flatten(2, -2)
    if add_k is not None:
        logits = torch.cat([logits, torch.einsum('bhnd,bshd->bhns', qh.flatten(2, -2) * scale, add_k)], dim=-1)
    attn = logits.softmax(-1)
    out = oracle_av(attn.unflatten(2, qh.shape[2:-1]), vh, kernel, dilation, causal, stride).flatten(2, -2)
    if add_v is not None:
        out = out + torch.einsum('bhns,bshd->bhnd', attn[..., -add_v.shape[1]:], add_v)
    spatial = q.shape[1:-2]
    return out.unflatten(2, spatial).movedim(1, -2), logits.logsumexp(-1).unflatten(2, spatial).movedim(1, -1)


def _heads_first(*tensors):
    return [t.movedim(-2, 1) for t in tensors]


def _two_step_inputs(spatial, **kwargs):
    """The NA tests' inputs with q, k, v heads-first (NATTEN's two-step layout) and the rpb as it is."""
    q, k, v, rpb = _inputs(spatial, **kwargs)
    return (*_heads_first(q, k, v), rpb)


# spatial, kernel, dilation, stride, causal (rpb where no axis is causal)
FUSED_CASES = [
    ((11,), (3,), (2,), (1,), (False,)),
    ((13,), (4,), (1,), (2,), (True,)),
    ((9, 10), (3, 4), (2, 1), (1, 2), (False, False)),
    ((8, 9), (3, 3), (1, 2), (1, 1), (True, False)),
    ((5, 6, 7), (3, 2, 3), (1, 2, 2), (1, 1, 2), (False, False, False)),
    ((6, 5, 5), (3, 3, 2), (2, 1, 1), (1, 2, 1), (True, False, True)),
]
# spatial, kernel, dilation, causal (the two-step ops have no stride)
TWO_STEP_CASES = [
    ((10,), (4,), (2,), (True,)),
    ((11,), (3,), (3,), (False,)),
    ((9, 10), (3, 4), (2, 1), (False, False)),
    ((8, 9), (3, 3), (1, 2), (False, True)),
    ((5, 6, 5), (3, 3, 3), (1, 2, 1), (False, False, False)),
    ((6, 5, 7), (3, 2, 3), (1, 2, 2), (True, False, False)),
]


def _case_id(case):
    return '-'.join('x'.join(str(int(v)) for v in part) for part in case)


@pytest.mark.parametrize('case', TWO_STEP_CASES, ids=_case_id)
def test_slot_oracle_agrees_with_the_na_oracle(case):
    # Ties the two-step oracle to the NA tests' dense oracle: softmax over the slots, then AV, is NA.
    spatial, kernel, dilation, causal = case
    rpb_kernel = None if any(causal) else kernel
    q, k, v, rpb = _inputs(spatial, dim_v=5, rpb_kernel=rpb_kernel, dtype=torch.float64)
    qh, kh, vh = _heads_first(q, k, v)
    attn = oracle_qk(qh * SCALE, kh, rpb, kernel, dilation, causal).softmax(-1)
    out = oracle_av(attn, vh, kernel, dilation, causal).movedim(1, -2)
    want = oracle(q, k, v, kernel, dilation, (1,) * len(spatial), causal, rpb, scale=SCALE)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Fused API (NATTEN >= 0.20; rpb as 0.17's fused ops).

@pytest.mark.parametrize('case', FUSED_CASES, ids=_case_id)
def test_fused_api_matches_oracle_and_op(case):
    spatial, kernel, dilation, stride, causal = case
    fn = getattr(natten, f'na{len(spatial)}d')
    rpb_kernel = None if any(causal) else kernel
    q, k, v, rpb = _inputs(spatial, dim_v=5, rpb_kernel=rpb_kernel, dtype=torch.float64)
    want = oracle(q, k, v, kernel, dilation, stride, causal, rpb, scale=SCALE)
    got = fn(q, k, v, kernel_size=kernel, stride=stride, dilation=dilation, is_causal=causal, scale=SCALE, rpb=rpb)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # NATTEN's positional order (stride before dilation) and its tuning arguments, which are ignored.
    positional = fn(q, k, v, kernel, stride, dilation, causal, SCALE, rpb=rpb, backend='cutlass-fna',
                    q_tile_shape=(8,) * len(spatial), torch_compile=True)
    assert torch.equal(positional, neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb=rpb,
                                                          scale=SCALE))
    assert torch.equal(got, positional)


@pytest.mark.parametrize('with_extra', [False, True], ids=['lse', 'additional_kv'])
@pytest.mark.parametrize('case', FUSED_CASES, ids=_case_id)
def test_fused_api_additional_kv_and_lse_match_oracle(case, with_extra):
    spatial, kernel, dilation, stride, causal = case
    fn = getattr(natten, f'na{len(spatial)}d')
    rpb_kernel = None if any(causal) else kernel
    q, k, v, rpb = _inputs(spatial, heads=2, dim_v=5, rpb_kernel=rpb_kernel, dtype=torch.float64, seed=1)
    gen = torch.Generator().manual_seed(2)
    add_k = torch.randn(2, 6, 2, 8, generator=gen, dtype=torch.float64) if with_extra else None
    add_v = torch.randn(2, 6, 2, 5, generator=gen, dtype=torch.float64) if with_extra else None
    want, want_lse = oracle_fused(q, k, v, kernel, dilation, stride, causal, rpb, SCALE, add_k, add_v)
    out, lse = fn(q, k, v, kernel, stride, dilation, causal, SCALE, add_k, add_v, rpb=rpb, return_lse=True)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, want_lse.float(), rtol=1e-6, atol=1e-6)
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:-1]
    if with_extra:
        only_out = fn(q, k, v, kernel, stride, dilation, causal, SCALE, additional_keys=add_k,
                      additional_values=add_v, rpb=rpb)
        torch.testing.assert_close(only_out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('with_extra', [False, True], ids=['plain', 'additional_kv'])
def test_fused_api_grouped_query_heads(with_extra):
    # GQA/MQA: 4 query heads on 2 key/value heads; NATTEN repeats each key/value head for consecutive query heads.
    spatial, kernel, dilation = (7, 8), (3, 3), (2, 1)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, *spatial, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, *spatial, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, *spatial, 2, 6, generator=gen, dtype=torch.float64)
    add_k = torch.randn(2, 5, 2, 8, generator=gen, dtype=torch.float64) if with_extra else None
    add_v = torch.randn(2, 5, 2, 6, generator=gen, dtype=torch.float64) if with_extra else None
    rep = [None if t is None else t.repeat_interleave(2, dim=-2) for t in (k, v, add_k, add_v)]
    want, _ = oracle_fused(q, rep[0], rep[1], kernel, dilation, (1, 1), (False, False), None, SCALE, rep[2], rep[3])
    got = natten.na2d(q, k, v, kernel, dilation=dilation, scale=SCALE, additional_keys=add_k, additional_values=add_v)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_fused_api_gradients_with_additional_kv():
    spatial, kernel, dilation, stride, causal = (6, 7), (3, 3), (1, 2), (2, 1), (True, False)
    gen = torch.Generator().manual_seed(4)
    inputs = [torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for shape in
              [(1, *spatial, 2, 4), (1, *spatial, 2, 4), (1, *spatial, 2, 3), (1, 5, 2, 4), (1, 5, 2, 3)]]
    got = natten.na2d(*inputs[:3], kernel, stride, dilation, causal, SCALE, *inputs[3:])
    want, _ = oracle_fused(*inputs[:3], kernel, dilation, stride, causal, None, SCALE, *inputs[3:])
    grad_out = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(got, inputs, grad_out),
                                   torch.autograd.grad(want, inputs, grad_out))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f'gradient {i}')


@pytest.mark.parametrize('n', [1, 2, 3])
def test_functional_fused_ops_take_natten_017_positional_order(n):
    # The drop-in reports NATTEN 0.17.5, whose natten.functional.na{1,2,3}d (functional.py of v0.17.5) take
    # (kernel_size, dilation, is_causal, rpb, scale, additional_keys, additional_values, xformers_kwargs); only
    # NATTEN >= 0.20's top-level natten.na{1,2,3}d (no callable in 0.17) put stride fifth. functional.na2d(q, k, v,
    # kernel_size, dilation) ran with stride=dilation, and a positional rpb was refused.
    spatial, kernel = (7, 8, 6)[:n], 3
    q, k, v, rpb = _inputs(spatial, dim_v=5, rpb_kernel=(kernel,) * n, dtype=torch.float64, seed=31)
    fn = getattr(functional, f'na{n}d')
    want = neighborhood_attention(q, k, v, kernel, dilation=2)
    torch.testing.assert_close(fn(q, k, v, kernel, 2), want, rtol=0, atol=0)
    want_rpb = neighborhood_attention(q, k, v, kernel, dilation=2, rpb=rpb, scale=SCALE)
    torch.testing.assert_close(fn(q, k, v, kernel, 2, False, rpb, SCALE, None, None, None), want_rpb, rtol=0, atol=0)
    # 0.20's arguments are keywords here; the top-level op keeps 0.20's positional order.
    torch.testing.assert_close(fn(q, k, v, kernel, 2, stride=2, backend='cutlass-fna'),
                               neighborhood_attention(q, k, v, kernel, dilation=2, stride=2), rtol=0, atol=0)
    torch.testing.assert_close(getattr(natten, f'na{n}d')(q, k, v, kernel, 2),
                               neighborhood_attention(q, k, v, kernel, stride=2), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Two-step API (NATTEN <= 0.17).

@pytest.mark.parametrize('case', TWO_STEP_CASES, ids=_case_id)
def test_two_step_api_matches_oracle(case):
    spatial, kernel, dilation, causal = case
    n = len(spatial)
    qk, av = getattr(functional, f'na{n}d_qk'), getattr(functional, f'na{n}d_av')
    rpb_kernel = None if any(causal) else kernel
    q, k, v, rpb = _two_step_inputs(spatial, dim_v=5, rpb_kernel=rpb_kernel, dtype=torch.float64)
    attn = qk(q * SCALE, k, kernel, dilation, is_causal=causal, rpb=rpb)
    want_attn = oracle_qk(q * SCALE, k, rpb, kernel, dilation, causal)
    assert attn.shape == (*q.shape[:-1], math.prod(kernel))
    torch.testing.assert_close(attn, want_attn, rtol=1e-10, atol=1e-10)
    # Arbitrary weights too, not only a softmax: AV weights the window slots as they are laid out.
    weights = torch.rand(attn.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    torch.testing.assert_close(av(weights, v, kernel, dilation, is_causal=causal),
                               oracle_av(weights, v, kernel, dilation, causal), rtol=1e-10, atol=1e-10)
    out = av(attn.softmax(-1), v, kernel, dilation, is_causal=causal).movedim(1, -2)
    want = oracle(*(t.movedim(1, -2) for t in (q, k, v)), kernel, dilation, (1,) * n, causal, rpb, scale=SCALE)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('n', [1, 2, 3])
def test_two_step_api_additional_tokens(n):
    spatial, kernel, dilation, causal = TWO_STEP_CASES[2 * n - 1][:4]
    q, k, v, _ = _two_step_inputs(spatial, dim_v=5, dtype=torch.float64, seed=6)
    gen = torch.Generator().manual_seed(7)
    add_k = torch.randn(2, 2, 4, 8, generator=gen, dtype=torch.float64)  # [batch, heads, tokens, head_dim]
    add_v = torch.randn(2, 2, 4, 5, generator=gen, dtype=torch.float64)
    attn = getattr(functional, f'na{n}d_qk')(q, k, kernel, dilation, additional_keys=add_k, is_causal=causal)
    want_extra = torch.einsum('bh...d,bhsd->bh...s', q, add_k)
    torch.testing.assert_close(attn[..., -4:], want_extra, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(attn[..., :-4], oracle_qk(q, k, None, kernel, dilation, causal), rtol=1e-10, atol=1e-10)
    weights = attn.softmax(-1)
    out = getattr(functional, f'na{n}d_av')(weights, v, kernel, dilation, additional_values=add_v, is_causal=causal)
    want = oracle_av(weights, v, kernel, dilation, causal) + torch.einsum('bh...s,bhsd->bh...d', weights[..., -4:],
                                                                         add_v)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


# NATTEN 0.14.6-0.17.4 names: one kernel size and dilation for all axes (3-D: a separate depth one).
LEGACY_CASES = [
    ((11,), (3,), (2,)),
    ((12,), (4,), (1,)),
    ((9, 10), (3, 3), (2, 2)),
    ((8, 7), (4, 4), (1, 1)),
    ((5, 7, 6), (2, 3, 3), (2, 1, 1)),
]


@pytest.mark.parametrize('with_rpb', [True, False], ids=['qkrpb', 'qk'])
@pytest.mark.parametrize('case', LEGACY_CASES, ids=_case_id)
def test_legacy_two_step_names_match_oracle(case, with_rpb):
    spatial, kernel, dilation = case
    n = len(spatial)
    q, k, v, rpb = _two_step_inputs(spatial, dim_v=5, rpb_kernel=kernel, dtype=torch.float64, seed=8)
    rpb = rpb if with_rpb else None
    sizes = (kernel[0], kernel[-1], dilation[0], dilation[-1]) if n == 3 else (kernel[0], dilation[0])
    if with_rpb:
        attn = getattr(functional, f'natten{n}dqkrpb')(q, k, rpb, *sizes)
    else:
        attn = getattr(functional, f'natten{n}dqk')(q, k, *sizes)
    causal = (False,) * n
    torch.testing.assert_close(attn, oracle_qk(q, k, rpb, kernel, dilation, causal), rtol=1e-10, atol=1e-10)
    out = getattr(functional, f'natten{n}dav')(attn.softmax(-1), v, *sizes)
    torch.testing.assert_close(out, oracle_av(attn.softmax(-1), v, kernel, dilation, causal), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('case', LEGACY_CASES, ids=_case_id)
def test_natten_015_qk_with_bias_names_match_oracle(case):
    # NATTEN 0.15's names (its NeighborhoodAttention modules ran na*d_qk_with_bias); 3-D takes kernel_size_d,
    # kernel_size, dilation_d, dilation. They were missing (AttributeError).
    spatial, kernel, dilation = case
    n = len(spatial)
    q, k, _, rpb = _two_step_inputs(spatial, rpb_kernel=kernel, dtype=torch.float64, seed=8)
    sizes = (kernel[0], kernel[-1], dilation[0], dilation[-1]) if n == 3 else (kernel[0], dilation[0])
    attn = getattr(functional, f'na{n}d_qk_with_bias')(q, k, rpb, *sizes)
    torch.testing.assert_close(attn, oracle_qk(q, k, rpb, kernel, dilation, (False,) * n), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('dtype', [torch.float64, torch.bfloat16])
def test_two_step_av_casts_the_weights_to_the_value_dtype(dtype):
    # NATTEN >= 0.15's AV runs attn.to(value.dtype): float32 weights (a softmax under autocast, or softmax(dtype=
    # torch.float32)) with half or double values. The drop-in refused them (ValueError).
    spatial, kernel, dilation, causal = TWO_STEP_CASES[3]
    _, _, v, _ = _two_step_inputs(spatial, dtype=dtype, seed=9)
    weights = torch.randn(*v.shape[:-1], math.prod(kernel), generator=torch.Generator().manual_seed(9)).softmax(-1)
    got = functional.na2d_av(weights, v, kernel, dilation, is_causal=causal)
    assert got.dtype == dtype
    torch.testing.assert_close(got, functional.na2d_av(weights.to(dtype), v, kernel, dilation, is_causal=causal),
                               rtol=0, atol=0)


def test_two_step_ops_compute_in_their_inputs_dtype_under_autocast():
    # NATTEN's QK/AV (and its fused ops) are extension kernels that autocast does not reach: float32 inputs give
    # float32 results under autocast (k-diffusion's HDiT feeds na2d_qk float32 q/k from cosine-sim scaling). The
    # drop-in's einsums were autocast to bfloat16 here (float16 on CUDA): a bfloat16 result, logits off by ~0.3; the
    # fused ops' reference path (the CPU's, and CUDA's for head_dim > 128) gave float32 off by ~0.03.
    spatial, kernel, dilation, causal = (7, 8), (3, 3), (2, 1), (False, False)
    q, k, v, rpb = _two_step_inputs(spatial, dim_v=5, rpb_kernel=kernel, dtype=torch.float32, seed=21)
    q, k = q * 3, k * 3
    gen = torch.Generator().manual_seed(22)
    add_k, add_v = torch.randn(2, 4, 2, 8, generator=gen), torch.randn(2, 4, 2, 5, generator=gen)
    want_attn = oracle_qk(q.double(), k.double(), rpb.double(), kernel, dilation, causal)
    weights = want_attn.softmax(-1)
    want_out = oracle_av(weights, v.double(), kernel, dilation, causal)
    want_fused, want_lse = oracle_fused(*(t.movedim(1, -2).double() for t in (q, k, v)), kernel, dilation, (1, 1),
                                        causal, rpb.double(), SCALE, add_k.double(), add_v.double())
    want_plain = oracle(*(t.movedim(1, -2).double() for t in (q, k, v)), kernel, dilation, (1, 1), causal,
                        rpb.double(), scale=SCALE)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        attn = functional.na2d_qk(q, k, kernel, dilation, rpb=rpb)
        out = functional.na2d_av(weights.float(), v, kernel, dilation)
        fused, lse = natten.na2d(*(t.movedim(1, -2) for t in (q, k, v)), kernel, dilation=dilation, scale=SCALE,
                                 additional_keys=add_k, additional_values=add_v, rpb=rpb, return_lse=True)
        plain = natten.na2d(*(t.movedim(1, -2) for t in (q, k, v)), kernel, dilation=dilation, scale=SCALE, rpb=rpb)
    assert attn.dtype == out.dtype == fused.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(plain.double(), want_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn.double(), want_attn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), want_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.double(), want_fused, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-5)
    # NATTEN 0.17's unfused module path under autocast: bfloat16 q/k/v from the Linear, float32 softmax weights cast
    # to the value's dtype by AV, and a bfloat16 output.
    module = natten.NeighborhoodAttention2D(16, 2, 3, rel_pos_bias=True, attn_drop=0.1).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert module(torch.randn(2, 7, 8, 16, generator=gen)).dtype == torch.bfloat16


def test_gradients_under_autocast_are_those_of_the_inputs_dtype():
    # NATTEN's autograd functions (custom_fwd/custom_bwd around extension kernels, functional.py of v0.17.5 and
    # backends/*.py of v0.20) compute forward and backward in their inputs' dtype under autocast. The drop-in's
    # reference and gather paths differentiated their einsums with autocast on when backward() ran inside the autocast
    # region: float32 gradients off by ~0.07 (bfloat16 products).
    spatial, kernel, dilation = (7, 8), (3, 3), (2, 1)
    q, k, v, rpb = _inputs(spatial, dim_v=5, rpb_kernel=kernel, dtype=torch.float32, seed=23)
    q, k = q * 3, k * 3
    gen = torch.Generator().manual_seed(24)
    add_k, add_v = torch.randn(2, 4, 2, 8, generator=gen), torch.randn(2, 4, 2, 5, generator=gen)
    weights = torch.randn(2, 2, *spatial, 9, generator=gen).softmax(-1)
    calls = {
        'fused_reference': lambda a, b, c, r: natten.na2d(a, b, c, kernel, dilation=dilation, rpb=r, scale=SCALE,
                                                          backend='reference'),
        'fused_gather': lambda a, b, c, r: natten.na2d(a, b, c, kernel, dilation=dilation, rpb=r, scale=SCALE,
                                                       additional_keys=add_k, additional_values=add_v),
        'two_step': lambda a, b, c, r: functional.na2d_av(
            functional.na2d_qk(a.movedim(-2, 1), b.movedim(-2, 1), kernel, dilation, rpb=r) * weights, c.movedim(-2, 1),
            kernel, dilation),
    }
    for name, call in calls.items():
        grads = []
        for autocast in (False, True):
            inputs = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
                out = call(*inputs)
                assert out.dtype == torch.float32
                out.square().sum().backward()
            grads.append([t.grad for t in inputs])
        for i, (got, want) in enumerate(zip(*reversed(grads))):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f'{name}: gradient {i}')
    # a derivative of those gradients (a gradient penalty) is refused, never silently wrong: the autocast-off graph is
    # built on detached copies, which torch's once_differentiable would let torch.autograd.grad prune without an error
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v, rpb)]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = calls['fused_reference'](*inputs)
        first = torch.autograd.grad(out.square().sum(), inputs, create_graph=True)
        with pytest.raises(RuntimeError, match='first derivatives only'):
            torch.autograd.grad(sum(g.square().sum() for g in first) + out.sum(), inputs)


def test_two_step_gradients_match_oracle():
    spatial, kernel, dilation, causal = (7, 6), (3, 3), (2, 1), (False, False)
    q, k, v, rpb = _two_step_inputs(spatial, dim_v=5, rpb_kernel=kernel, dtype=torch.float64, seed=9)
    inputs = [t.requires_grad_() for t in (q, k, v, rpb)]

    def run(qk, av):
        return av(qk(inputs[0], inputs[1], inputs[3]).softmax(-1), inputs[2])

    got = run(lambda a, b, r: functional.na2d_qk(a, b, kernel, dilation, rpb=r),
              lambda a, b: functional.na2d_av(a, b, kernel, dilation))
    want = run(lambda a, b, r: oracle_qk(a, b, r, kernel, dilation, causal),
               lambda a, b: oracle_av(a, b, kernel, dilation, causal))
    grad_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(got, inputs, grad_out),
                                   torch.autograd.grad(want, inputs, grad_out))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f'gradient {i}')


# ----------------------------------------------------------------------------------------------------------------
# Modules (NATTEN 0.17).

def _module_reference(module, x):
    """NATTEN 0.14's module, written out: zero-pad the axes shorter than kernel * dilation at their end, qkv, NA (the
    NA tests' oracle), crop, proj."""
    spatial = tuple(x.shape[1:-1])
    pads = [max(0, k * d - s) for k, d, s in zip(module.kernel_size, module.dilation, spatial)]
    padded = F.pad(x, [0, 0] + [v for p in reversed(pads) for v in (0, p)])
    q, k, v = F.linear(padded, module.qkv.weight, module.qkv.bias).unflatten(
        -1, (3, module.num_heads, module.head_dim)).unbind(-3)
    out = oracle(q, k, v, module.kernel_size, module.dilation, module.stride, module.is_causal, module.rpb,
                 scale=module.scale).flatten(-2)
    out = out[(slice(None), *(slice(0, s) for s in spatial))]
    return F.linear(out, module.proj.weight, module.proj.bias)


# spatial, kernel, dilation, stride, causal, rel_pos_bias
MODULE_CASES = [
    ((11,), 3, 2, 1, False, True),
    ((5,), 3, 2, 1, False, True),  # shorter than the window: padded
    ((9,), 4, 1, 2, True, False),
    ((7, 9), 3, (2, 1), 1, False, True),
    ((4, 9), 3, 2, 1, False, True),  # padded rows
    ((8, 9), (3, 4), 1, (2, 2), (True, False), False),
    ((4, 5, 6), (2, 3, 3), (1, 1, 2), 1, False, True),
    ((5, 4, 6), 3, 1, (1, 1, 3), (False, True, False), False),
]


@pytest.mark.parametrize('case', MODULE_CASES, ids=lambda c: f'{len(c[0])}d-{"x".join(map(str, c[0]))}')
def test_modules_match_oracle(case):
    spatial, kernel, dilation, stride, causal, rel_pos_bias = case
    cls = getattr(natten, f'NeighborhoodAttention{len(spatial)}D')
    module = cls(12, 2, kernel, dilation, causal, rel_pos_bias, stride=stride).double().eval()
    x = torch.randn(2, *spatial, 12, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _module_reference(module, x), rtol=1e-10, atol=1e-10)


def test_module_2d_has_the_official_nat_layout():
    # NAT-Mini's level-1 attention (128 channels, 4 heads, 7x7) in the official checkpoint layout of test_nat.py.
    prefix = 'levels.1.blocks.0.attn.'
    want = {key[len(prefix):]: shape for key, shape in official_keys('nat_mini').items() if key.startswith(prefix)}
    with torch.device('meta'):
        compat = natten.NeighborhoodAttention2D(128, 4, 7, rel_pos_bias=True)
        ours = NeighborhoodAttention2d(128, 4, 7)
    assert {key: tuple(t.shape) for key, t in compat.state_dict().items()} == want
    assert {key: tuple(t.shape) for key, t in ours.state_dict().items()} == want


@pytest.mark.parametrize('size, kernel, dilation', [((9, 11), 3, 2), ((5, 6), 3, 2), ((8, 8), 4, 1)])
def test_module_2d_equals_visionattn_nat_layer(size, kernel, dilation):
    ours = NeighborhoodAttention2d(16, 2, kernel, dilation).double().eval()
    compat = natten.NeighborhoodAttention2D(16, 2, kernel, dilation, rel_pos_bias=True).double().eval()
    compat.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(compat.state_dict(), strict=True)
    x = torch.randn(2, *size, 16, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    torch.testing.assert_close(compat(x), ours(x), rtol=1e-12, atol=1e-12)


def test_module_constructor_follows_natten_017_and_takes_older_names():
    assert natten.NeighborhoodAttention2D(16, 2, 3).rpb is None  # NATTEN 0.17's default
    assert natten.NeighborhoodAttention2D(16, 2, 3, bias=True).rpb.shape == (2, 5, 5)  # 0.14/0.15's name
    assert natten.NeighborhoodAttention2D(16, 2, 7, dilation=None).dilation == (1, 1)  # as the official NAT passes it
    module = natten.NeighborhoodAttention3D(16, 2, 3, kernel_size_d=5, dilation=2, dilation_d=1, bias=True)
    assert module.kernel_size == (5, 3, 3) and module.dilation == (1, 2, 2) and module.rpb.shape == (2, 9, 5, 5)
    module = natten.NeighborhoodAttention1D(16, 4, 5, 2, True, False, False, 0.5)
    assert (module.kernel_size, module.dilation, module.is_causal, module.qkv.bias, module.scale) == (
        (5,), (2,), (True,), None, 0.5)


@pytest.mark.parametrize('n', [1, 2, 3])
def test_module_loading_a_bias_checkpoint_without_rel_pos_bias_says_why(n):
    # NATTEN 0.14/0.15's modules had an rpb unless bias=False; 0.17's (and the drop-in's) have none unless
    # rel_pos_bias=True. Their checkpoints hold `rpb`: a strict load into a module built without one failed with
    # PyTorch's bare "Unexpected key(s)", a non-strict one dropped the bias silently; both now name the argument.
    cls = getattr(natten, f'NeighborhoodAttention{n}D')
    checkpoint = {f'0.{key}': t for key, t in cls(8, 2, 3, bias=True).state_dict().items()}
    with pytest.warns(UserWarning, match=r'0\.rpb .*rel_pos_bias=True'), pytest.raises(RuntimeError, match='rpb'):
        torch.nn.Sequential(cls(8, 2, 3)).load_state_dict(checkpoint)
    with pytest.warns(UserWarning, match='rel_pos_bias=True'):
        result = torch.nn.Sequential(cls(8, 2, 3)).load_state_dict(checkpoint, strict=False)
    assert result.unexpected_keys == ['0.rpb'] and not result.missing_keys
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        torch.nn.Sequential(cls(8, 2, 3, rel_pos_bias=True)).load_state_dict(checkpoint)


@pytest.mark.parametrize('n', [1, 2, 3])
def test_module_takes_natten_020_keywords(n):
    # NATTEN >= 0.20's modules: (embed_dim, num_heads, kernel_size, stride, dilation, is_causal, qkv_bias, qk_scale,
    # proj_drop); its documentation passes them by keyword. embed_dim was refused (TypeError).
    cls = getattr(natten, f'NeighborhoodAttention{n}D')
    module = cls(embed_dim=12, num_heads=2, kernel_size=3, stride=(2,) + (1,) * (n - 1), dilation=(1,) * (n - 1) + (2,),
                 is_causal=(True,) + (False,) * (n - 1), qkv_bias=False, qk_scale=0.5, proj_drop=0.).double().eval()
    assert module.embed_dim == module.dim == 12 and module.qkv.bias is None and module.rpb is None
    x = torch.randn(2, *(7, 6, 6)[:n], 12, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    torch.testing.assert_close(module(x), _module_reference(module, x), rtol=1e-10, atol=1e-10)


def test_module_under_autocast_attends_as_natten():
    # Under autocast NATTEN's module feeds its kernel the bfloat16/float16 q, k, v of the qkv Linear, and the kernel
    # takes them as they are (float32 logits and softmax, a half output). The drop-in's op on its reference path
    # (the CPU's; CUDA's for head_dim > 128) was autocast itself: bfloat16 logits, outputs off by ~0.5 at logits ~30.
    gen = torch.Generator().manual_seed(0)
    module = natten.NeighborhoodAttention2D(16, 2, 3, dilation=2, rel_pos_bias=True).eval()
    with torch.no_grad():
        module.qkv.weight.copy_(torch.randn(48, 16, generator=gen))  # large logits, where bfloat16 ones are coarse
        module.proj.weight.copy_(torch.eye(16))  # the output is the attention's, exactly
        module.proj.bias.zero_()
    x = torch.randn(2, 7, 8, 16, generator=gen)
    with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
        got = module(x)
        q, k, v = module.qkv(x).unflatten(-1, (3, 2, 8)).unbind(-3)
    assert got.dtype == q.dtype == torch.bfloat16
    want = oracle(q.double(), k.double(), v.double(), (3, 3), (2, 2), (1, 1), (False, False), module.rpb.double(),
                  scale=module.scale).flatten(-2)
    torch.testing.assert_close(got.double(), want, rtol=2 ** -7, atol=0.02)  # the bfloat16 output's rounding


def test_module_attention_dropout_runs_unfused_in_training():
    module = natten.NeighborhoodAttention2D(16, 2, 3, dilation=2, rel_pos_bias=True, attn_drop=0.4).double()
    x = torch.randn(2, 7, 8, 16, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    fused = module.eval()(x)
    torch.testing.assert_close(fused, _module_reference(module, x), rtol=1e-10, atol=1e-10)
    module.train()
    torch.manual_seed(15)
    got = module(x)
    # NATTEN 0.17's unfused path: scaled QK with rpb, softmax, dropout, AV.
    torch.manual_seed(15)
    q, k, v = _heads_first(*F.linear(x, module.qkv.weight, module.qkv.bias).unflatten(-1, (3, 2, 8)).unbind(-3))
    attn = functional.natten2dqkrpb(q * module.scale, k, module.rpb, 3, 2).softmax(-1)
    out = functional.natten2dav(F.dropout(attn, 0.4), v, 3, 2).movedim(1, -2).flatten(-2)
    torch.testing.assert_close(got, F.linear(out, module.proj.weight, module.proj.bias), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, fused)


# ----------------------------------------------------------------------------------------------------------------
# install(): `import natten` gives the drop-in, never over a real natten.

def _skip_if_a_real_natten_is_installed():
    """install() keeps a real natten (test_install_never_replaces_a_real_natten covers that case): skip the tests of
    the drop-in's own `import natten` there."""
    if importlib.util.find_spec('natten') is not None:
        pytest.skip('a real natten is installed here: install() keeps it')


@pytest.fixture
def natten_unloaded():
    """No `natten` module imported during the test; whatever was imported before is restored after it."""
    def ours():
        return {name: m for name, m in sys.modules.items() if name == 'natten' or name.startswith('natten.')}
    saved = ours()
    for name in saved:
        del sys.modules[name]
    yield
    natten.uninstall()  # also when the test failed before its own uninstall (the metadata finder)
    for name in ours():
        del sys.modules[name]
    sys.modules.update(saved)


def test_install_makes_import_natten_give_the_dropin(natten_unloaded):
    _skip_if_a_real_natten_is_installed()
    assert natten.install() is natten
    import natten as imported
    from natten.context import use_fused_na
    from natten.flops import add_natten_handle
    from natten.natten2d import NeighborhoodAttention2D
    assert imported is natten and importlib.import_module('natten.functional') is functional
    assert use_fused_na is context.use_fused_na and add_natten_handle is natten.flops.add_natten_handle
    assert NeighborhoodAttention2D is natten.NeighborhoodAttention2D and hasattr(imported, 'context')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert natten.install() is natten  # again: nothing to say
    natten.uninstall()
    assert not any(name == 'natten' or name.startswith('natten.') for name in sys.modules)


def test_install_provides_the_natten_017_module_files(natten_unloaded):
    # NATTEN 0.17 kept its modules in natten/na{1,2,3}d.py (0.17's natten.natten2d tells users to import from
    # natten.na2d); `from natten.na2d import NeighborhoodAttention2D` was a ModuleNotFoundError.
    _skip_if_a_real_natten_is_installed()
    natten.install()
    from natten.na1d import NeighborhoodAttention1D
    from natten.na2d import NeighborhoodAttention2D, na2d, na2d_av, na2d_qk
    from natten.na3d import NeighborhoodAttention3D
    assert (NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D) == (
        natten.NeighborhoodAttention1D, natten.NeighborhoodAttention2D, natten.NeighborhoodAttention3D)
    assert (na2d, na2d_qk, na2d_av) == (functional.na2d, functional.na2d_qk, functional.na2d_av)
    import natten as imported
    # The attribute is NATTEN >= 0.20's fused op (stride fifth); 0.17's na2d.py imported functional.na2d (dilation
    # fifth), which `from natten.na2d import na2d` gives.
    assert imported.na2d is functional.na2d_v020 and na2d is functional.na2d
    assert importlib.util.find_spec('natten.na2d') is not None
    natten.uninstall()
    assert not any(name == 'natten' or name.startswith('natten.') for name in sys.modules)


def test_install_makes_natten_visible_to_package_metadata(natten_unloaded):
    # Hugging Face transformers (NAT, DiNAT, OneFormer's DiNAT) decides whether natten is installed with
    # importlib.util.find_spec('natten') and importlib.metadata.version('natten'); the second raised
    # PackageNotFoundError, so NatModel refused to build ("requires the natten library") after install().
    _skip_if_a_real_natten_is_installed()
    natten.install()
    assert importlib.util.find_spec('natten') is not None
    assert importlib.metadata.version('natten') == natten.__version__
    assert importlib.metadata.metadata('natten')['Name'] == 'natten'
    assert importlib.metadata.version('NATTEN') == natten.__version__  # names are matched as pip normalizes them
    natten.uninstall()
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version('natten')
    assert importlib.metadata.version('torch')  # other distributions are untouched


class _BrokenNattenFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A `natten` that is installed but fails to import, as a wheel built for another torch does."""

    def find_spec(self, name, path=None, target=None):
        if name == 'natten':
            return importlib.machinery.ModuleSpec('natten', self, origin='/site-packages/natten/__init__.py')
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError('libnatten.so: undefined symbol (built for another torch)')


@pytest.mark.parametrize('real', ['on_sys_path', 'already_imported', 'fails_to_import'])
def test_install_never_replaces_a_real_natten(real, natten_unloaded, tmp_path, monkeypatch):
    if real == 'on_sys_path':
        (tmp_path / 'natten').mkdir()
        (tmp_path / 'natten' / '__init__.py').write_text('REAL = True\n')
        monkeypatch.syspath_prepend(str(tmp_path))
        with pytest.warns(UserWarning, match='a real NATTEN is installed'):
            module = natten.install()
        assert module.REAL and sys.modules['natten'] is module and 'natten.functional' not in sys.modules
    elif real == 'already_imported':
        sys.modules['natten'] = module = types.ModuleType('natten')
        with pytest.warns(UserWarning, match='already imported'):
            assert natten.install() is module
        assert sys.modules['natten'] is module
    else:
        monkeypatch.setattr(sys, 'meta_path', [_BrokenNattenFinder(), *sys.meta_path])
        with pytest.warns(UserWarning), pytest.raises(ImportError, match='pip uninstall natten'):
            natten.install()
        assert sys.modules.get('natten') is not natten
    natten.uninstall()  # leaves a real natten alone
    assert sys.modules.get('natten') is not natten
    if real != 'fails_to_import':
        assert sys.modules['natten'] is module


# ----------------------------------------------------------------------------------------------------------------
# A model written against NATTEN's module API, as the official NAT/DiNAT classification code is
# (SHI-Labs/Neighborhood-Attention-Transformer classification/nat.py, dinat.py): same structure and names.

NAT_STYLE_SOURCE = '''
import torch
from torch import nn

import natten
from natten import NeighborhoodAttention2D as NeighborhoodAttention

is_natten_post_017 = hasattr(natten, "context")


class ConvTokenizer(nn.Module):
    def __init__(self, in_chans=3, embed_dim=96):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(embed_dim // 2, embed_dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class NATLayer(nn.Module):
    def __init__(self, dim, num_heads, kernel_size=7, dilation=None, mlp_ratio=4.0, layer_scale=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        extra_args = {"rel_pos_bias": True} if is_natten_post_017 else {"bias": True}
        self.attn = NeighborhoodAttention(
            dim, kernel_size=kernel_size, dilation=dilation, num_heads=num_heads, qkv_bias=True, qk_scale=None,
            attn_drop=0.0, proj_drop=0.0, **extra_args)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.layer_scale = layer_scale is not None
        if self.layer_scale:
            self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x):
        if not self.layer_scale:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.mlp(self.norm2(x))


class NATBlock(nn.Module):
    def __init__(self, dim, depth, num_heads, kernel_size, dilations=None, downsample=True, mlp_ratio=4.0,
                 layer_scale=None):
        super().__init__()
        self.blocks = nn.ModuleList([
            NATLayer(dim, num_heads, kernel_size, None if dilations is None else dilations[i], mlp_ratio, layer_scale)
            for i in range(depth)])
        self.downsample = ConvDownsampler(dim) if downsample else None

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class NAT(nn.Module):
    def __init__(self, embed_dim, mlp_ratio, depths, num_heads, kernel_size=7, dilations=None, num_classes=1000,
                 layer_scale=None):
        super().__init__()
        self.patch_embed = ConvTokenizer(embed_dim=embed_dim)
        self.levels = nn.ModuleList([
            NATBlock(int(embed_dim * 2 ** i), depth, num_heads[i], kernel_size,
                     None if dilations is None else dilations[i], i < len(depths) - 1, mlp_ratio, layer_scale)
            for i, depth in enumerate(depths)])
        self.num_features = int(embed_dim * 2 ** (len(depths) - 1))
        self.norm = nn.LayerNorm(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        x = self.norm(x).flatten(1, 2)
        return self.head(self.avgpool(x.transpose(1, 2)).flatten(1))
'''


@pytest.fixture
def nat_style(natten_unloaded, tmp_path):
    """The official-style model's module, imported (its `import natten` included) after install()."""
    _skip_if_a_real_natten_is_installed()
    path = tmp_path / 'nat_style.py'
    path.write_text(NAT_STYLE_SOURCE)
    natten.install()
    spec = importlib.util.spec_from_file_location('nat_style', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    natten.uninstall()


def test_official_style_model_loads_nat_checkpoints_and_matches_visionattn(nat_style):
    assert nat_style.natten is natten and nat_style.is_natten_post_017
    # The official checkpoint layout of NAT-Mini (test_nat.py), built on the meta device: keys and shapes.
    with torch.device('meta'):
        mini = nat_style.NAT(64, 3, (3, 4, 6, 5), (2, 4, 8, 16))
    assert {key: tuple(t.shape) for key, t in mini.state_dict().items()} == official_keys('nat_mini')
    # A tiny DiNAT with layer scale, dilations and maps smaller than the window (padded): visionattn's NAT's weights
    # load strictly and both models give the same logits.
    config = dict(embed_dim=16, mlp_ratio=2, depths=(1, 2), num_heads=(1, 2), kernel_size=3, dilations=[[1], [1, 2]],
                  num_classes=5, layer_scale=0.5)
    official = nat_style.NAT(**config).double().eval()
    ours = NAT(**config).double().eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 28, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    torch.testing.assert_close(official(x), ours(x), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------------------------
# Errors name the argument; NATTEN's switches change nothing.

_Q2 = torch.randn(1, 8, 7, 2, 4)
_Q2_HF = _Q2.movedim(-2, 1)
_Q3_HF = torch.randn(1, 2, 5, 6, 6, 4)
with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # the nested-tensor API's prototype warning
    _NESTED = torch.nested.nested_tensor([torch.randn(2, 8, 7, 4), torch.randn(2, 8, 7, 4)])

ERROR_CASES = {
    'values_without_keys': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, additional_values=_Q2.flatten(1, 2)), ValueError,
                            'additional_keys and additional_values'),
    'extra_keys_shape': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, additional_keys=_Q2, additional_values=_Q2),
                         ValueError, 'additional_keys must be'),
    'unknown_backend': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, backend='cudnn'), ValueError, 'backend'),
    'no_kv_heads': (lambda: natten.na2d(_Q2, _Q2[..., :0, :], _Q2[..., :0, :], 3), ValueError,
                    r'key/value heads \(0\)'),  # was a ZeroDivisionError
    'unknown_argument': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, tile_size=8), TypeError, 'tile_size'),
    'rank': (lambda: natten.na2d(_Q2[:, 0], _Q2[:, 0], _Q2[:, 0], 3), ValueError, 'query must be 5-D'),
    'kv_heads': (lambda: natten.na2d(_Q2, _Q2[..., :1, :].expand(1, 8, 7, 3, 4)[..., :3, :],
                                     _Q2[..., :1, :].expand(1, 8, 7, 3, 4)[..., :3, :], 3), ValueError, 'heads'),
    'too_small': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, dilation=3), ValueError, 'kernel_size'),
    'rpb_causal': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, is_causal=True, rpb=torch.zeros(2, 5, 5)), ValueError,
                   'causal'),
    'attn_width': (lambda: functional.natten2dav(_Q2_HF, _Q2_HF, 3, 1), ValueError, 'attn has 4 weights'),
    'qk_rpb_shape': (lambda: functional.natten2dqkrpb(_Q2_HF, _Q2_HF, torch.zeros(2, 3, 3), 3, 1), ValueError,
                     'rpb shape'),
    'nested': (lambda: functional.na2d_qk(_NESTED, _NESTED, 3), NotImplementedError, r'natten\.na2d'),
    'rpb_with_causal_module': (lambda: natten.NeighborhoodAttention2D(16, 2, 3, is_causal=True, rel_pos_bias=True),
                               NotImplementedError, 'rel_pos_bias'),
    'bias_disagrees': (lambda: natten.NeighborhoodAttention2D(16, 2, 3, rel_pos_bias=False, bias=True), ValueError,
                       'bias'),
    'heads': (lambda: natten.NeighborhoodAttention2D(16, 3, 3), ValueError, 'num_heads'),
    'module_kernel': (lambda: natten.NeighborhoodAttention2D(16, 2, (3, 3, 3)), ValueError, 'kernel_size'),
    'module_input': (lambda: natten.NeighborhoodAttention2D(16, 2, 3)(torch.randn(1, 5, 16)), ValueError, 'rank-4'),
    # NATTEN 0.15's na3d_qk(query, key, kernel_size_d, kernel_size, dilation_d, dilation) met 0.17's signature: the
    # message named additional_keys only.
    'na3d_qk_015_order': (lambda: functional.na3d_qk(_Q3_HF, _Q3_HF, 3, 3, 1, 1), ValueError,
                          r"NATTEN 0\.15's na3d_qk.*natten3dqk"),
    'na3d_av_015_order': (lambda: functional.na3d_av(_Q3_HF[..., :1].expand(1, 2, 5, 6, 6, 27), _Q3_HF, 3, 3, 1, 1),
                          ValueError, r"NATTEN 0\.15's na3d_av.*natten3dav"),
    'attn_not_floating': (lambda: functional.na2d_av(torch.zeros(1, 2, 8, 7, 9, dtype=torch.long), _Q2_HF, 3),
                          ValueError, 'floating'),
    # GQA key/value of the wrong spatial size: the message showed the heads repeated, not the shape passed.
    'kv_heads_key_shape': (lambda: natten.na2d(_Q2, _Q2[:, :6, :, :1], _Q2[:, :6, :, :1], 3), ValueError,
                           r'key shape \(1, 6, 7, 1, 4\)'),
    'kv_heads_value_shape': (lambda: natten.na2d(_Q2, _Q2[..., :1, :], _Q2[:, :6, :, :1], 3), ValueError,
                             r'value shape \(1, 6, 7, 1, 4\)'),
    'module_qk_scale': (lambda: natten.NeighborhoodAttention2D(16, 2, 3, qk_scale=float('nan')), ValueError,
                        'qk_scale=nan'),  # was accepted: NaN outputs on the unfused path
    'module_dim': (lambda: natten.NeighborhoodAttention2D(16.0, 2, 3), ValueError, r'dim=16\.0'),  # torch's TypeError
    'module_no_dim': (lambda: natten.NeighborhoodAttention2D(num_heads=2, kernel_size=3), TypeError, 'embed_dim'),
    'module_dims_disagree': (lambda: natten.NeighborhoodAttention2D(16, 2, 3, embed_dim=8), ValueError, 'disagree'),
    # NATTEN 0.15's kernel_size_d: dilation=0 was silently taken as 1 (0.15 refused it).
    'module_3d_dilation_0': (lambda: natten.NeighborhoodAttention3D(16, 2, 3, dilation=0, kernel_size_d=3), ValueError,
                             'dilation'),
    # NATTEN 0.17's fused na2d(q, k, v, kernel_size, dilation, is_causal, rpb, scale) called positionally meets
    # 0.20's order (stride fifth): is_causal lands in dilation. The message said only "must be an int".
    'fused_017_positional_order': (lambda: natten.na2d(_Q2, _Q2, _Q2, 3, 1, False), ValueError,
                                   r"NATTEN 0\.17's fused na2d.*by keyword"),
    'fused_017_positional_rpb': (lambda: natten.na1d(_Q2[:, 0], _Q2[:, 0], _Q2[:, 0], 3, 1, 1, torch.zeros(2, 5)),
                                 ValueError, r"NATTEN 0\.17's fused na1d.*by keyword"),
    # NATTEN >= 0.20's order (stride, dilation, is_causal) given positionally to natten.functional.na2d, which takes
    # 0.17.5's (dilation, is_causal, rpb): an int where 0.17 has is_causal, a bool where it has rpb. They ran as 0.20's.
    'functional_020_positional_dilation': (lambda: functional.na2d(_Q2, _Q2, _Q2, 3, 1, 2), ValueError,
                                           r"NATTEN >= 0\.20's order.*natten\.na2d"),
    'functional_020_positional_causal': (lambda: functional.na1d(_Q2[:, 0], _Q2[:, 0], _Q2[:, 0], 3, 1, 1, False),
                                         ValueError, r"NATTEN >= 0\.20's order.*natten\.na1d"),
    'missing_attribute': (lambda: natten.merge_attentions, AttributeError, 'merge_attentions'),
    'missing_function': (lambda: functional.attention, AttributeError, "'attention'"),
    'memory_preference': (lambda: natten.set_memory_usage_preference('fast'), ValueError, 'pref'),
}


@pytest.mark.parametrize('call, error, match', ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.fixture
def saved_flags():
    flags = dict(context._flags)
    yield
    context._flags.clear()
    context._flags.update(flags)


@pytest.mark.parametrize('name', context.__all__)
def test_natten_switches_are_harmless(name, saved_flags):
    q, k, v, rpb = _inputs((9, 8), rpb_kernel=(3, 3), seed=17)
    before = natten.na2d(q, k, v, 3, dilation=2, rpb=rpb)
    result = getattr(natten, name)()  # every switch and query takes no required argument
    if name.startswith(('has_', 'is_', 'are_')):
        assert isinstance(result, bool)
    assert torch.equal(natten.na2d(q, k, v, 3, dilation=2, rpb=rpb), before)
    assert natten.has_fused_na() == natten.has_cuda() and not natten.has_gemm()
    counter = object()
    assert natten.flops.add_natten_handle(counter) is counter


def test_fused_switch_state_follows_natten_017(saved_flags):
    # NATTEN 0.17.5's context.py: is_fused_na_enabled() is False until use_fused_na(); use_fused_na(False) also turns
    # KV parallelism and Flex off; use_flex_attention() is use_fused_na with Flex. The drop-in said True always, so
    # code that branches on it (its fused path takes no rpb gradient in 0.17) took the other branch than under NATTEN.
    context._flags.update(fused=False, flex=False, force_flex=False, kv_parallelism=False)
    assert natten.is_fused_na_enabled() is False and natten.is_fna_enabled() is False
    natten.use_fused_na(True, kv_parallel=True)
    assert natten.is_fused_na_enabled() and natten.is_kv_parallelism_in_fused_na_enabled()
    assert not natten.should_use_flex_attention()
    natten.use_fused_na(False)
    assert not natten.is_fused_na_enabled() and not natten.is_kv_parallelism_in_fused_na_enabled()
    natten.force_flex_attention()
    assert natten.is_fused_na_enabled() and natten.should_use_flex_attention() and natten.should_force_flex_attention()


# ----------------------------------------------------------------------------------------------------------------
# natten.flops and the capability queries of NATTEN 0.14-0.17, as their README and docs show them.

class _FakeFlopCount:
    """fvcore's FlopCountAnalysis as NATTEN's get_flops uses it: records the calls, totals 1234."""

    def __init__(self, model, inputs):
        self.model, self.inputs, self.handles, self.warnings = model, inputs, {}, True

    def set_op_handle(self, **handles):
        self.handles.update(handles)
        return self

    def unsupported_ops_warnings(self, enabled):
        self.warnings = enabled
        return self

    def total(self):
        _FakeFlopCount.last = self
        return 1234


@pytest.mark.parametrize('disable_warnings', [False, True])
def test_flops_get_flops_counts_with_fvcore(disable_warnings, monkeypatch):
    # NATTEN 0.14-0.17's README: `from natten.flops import get_flops; flops = get_flops(model, input)`, which is
    # fvcore's FlopCountAnalysis(model, input) with NATTEN's handles, warnings off on request, and its total.
    fvcore, fvcore_nn = types.ModuleType('fvcore'), types.ModuleType('fvcore.nn')
    fvcore_nn.FlopCountAnalysis = _FakeFlopCount
    fvcore.nn = fvcore_nn
    monkeypatch.setitem(sys.modules, 'fvcore', fvcore)
    monkeypatch.setitem(sys.modules, 'fvcore.nn', fvcore_nn)
    model, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    assert natten.flops.get_flops(model, x, disable_warnings=disable_warnings) == 1234
    counted = _FakeFlopCount.last
    assert counted.model is model and counted.inputs is x and counted.warnings is not disable_warnings


def test_flops_get_flops_without_fvcore_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'fvcore', None)  # `import fvcore` raises ImportError
    with pytest.raises(ImportError, match='fvcore'):
        natten.flops.get_flops(torch.nn.Linear(4, 4), torch.randn(2, 4))


class _JitValue:
    """What fvcore hands an op handle: a traced value whose ``type().sizes()`` is its shape."""

    def __init__(self, *shape):
        self.shape = list(shape)

    def type(self):
        return self

    def sizes(self):
        return self.shape


@pytest.mark.parametrize('n', [1, 2, 3])
def test_flops_legacy_handles_count_as_natten(n):
    # NATTEN 0.14's qk_rpb_flop/av_flop (2-D) and qk_1d_rpb_flop/av_1d_flop, 0.15-0.17.4's qk_{1,2,3}d_rpb_flop and
    # av_{1,2,3}d_flop: fvcore handles that code imports by name beside add_natten_handle (ImportError before).
    # NATTEN counts QK as one multiply-add per (query, slot, channel) plus one add per (query, slot) for the bias,
    # AV as one multiply-add per (query, slot, channel), on heads-first [batch, heads, *spatial, ...] shapes.
    batch, heads, spatial, dim, slots = 2, 3, (5, 6, 7)[:n], 8, 3 ** n
    queries = batch * heads * math.prod(spatial)
    q = _JitValue(batch, heads, *spatial, dim)
    attn = _JitValue(batch, heads, *spatial, slots)
    qk_names = [f'qk_{n}d_rpb_flop'] + (['qk_rpb_flop'] if n == 2 else [])
    av_names = [f'av_{n}d_flop'] + (['av_flop'] if n == 2 else [])
    for name in qk_names:
        assert getattr(natten.flops, name)([q, q, _JitValue(heads, *(5,) * n)], [attn]) == queries * slots * (dim + 1)
    for name in av_names:
        assert getattr(natten.flops, name)([attn, q], [q]) == queries * slots * dim


def test_functional_has_the_capability_queries_of_natten_015(natten_unloaded):
    # NATTEN 0.15's natten.functional held the capability queries and dispatcher switches (0.17's docs still show
    # `from natten.functional import has_gemm`), and 0.17's docs `from natten.utils import get_device_cc`.
    names = ['has_cuda', 'has_half', 'has_bfloat', 'has_gemm', 'has_tf32_gemm', 'has_fp32_gemm', 'has_fp64_gemm']
    for name in names:
        assert getattr(functional, name)() == getattr(natten, name)()
    for name in ('enable_tf32', 'disable_tf32', 'enable_tiled_na', 'disable_tiled_na', 'enable_gemm_na',
                 'disable_gemm_na', 'get_device_cc'):
        assert callable(getattr(functional, name))
    _skip_if_a_real_natten_is_installed()
    natten.install()
    from natten.utils import get_device_cc
    assert get_device_cc is functional.get_device_cc
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert get_device_cc() == major * 10 + minor
    natten.uninstall()


@pytest.mark.parametrize('cuda, triton, capability', [
    (False, True, None), (True, True, (8, 0)), (True, True, (7, 5)), (True, False, (9, 0))],
    ids=['cpu_only', 'sm80', 'sm75', 'no_triton'])
def test_capability_queries_say_whether_the_kernels_run(monkeypatch, cuda, triton, capability):
    # NATTEN 0.17.5's context.py: has_cuda() is torch.cuda.is_available() and a CUDA build; has_half/has_fna need it
    # (cc >= 50), has_bfloat cc >= 80. Code branches on them to take the kernel path (natten.use_fused_na(), half
    # inputs, CUDA tensors); the drop-in's kernels are Triton's, so they run where CUDA and Triton are. has_fna,
    # has_half and has_bfloat were True on a CPU-only machine.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(context, '_TRITON_AVAILABLE', triton)
    monkeypatch.delenv('VISIONATTN_BACKEND', raising=False)
    kernels = cuda and triton
    for name in ('has_cuda', 'has_half', 'has_fna', 'has_fused_na'):
        assert getattr(natten, name)() is kernels, name
        assert getattr(functional, name, getattr(natten, name))() is kernels, name
    assert natten.has_bfloat() is (kernels and capability >= (8, 0))
    assert not natten.has_gemm() and not natten.has_tf32_gemm() and not natten.has_fp64_gemm()
    if kernels:
        monkeypatch.setenv('VISIONATTN_BACKEND', 'reference')  # the kernels are switched off
        assert not natten.has_cuda() and not natten.has_fna()


def test_has_libnatten_is_false_and_libnatten_does_not_import(natten_unloaded):
    # NATTEN >= 0.20 sets HAS_LIBNATTEN to whether `from natten import libnatten` (its C++ extension) succeeds, and its
    # own code (backends/configs/checks.py, token_permute/cutlass_impl.py of v0.21.5) calls into libnatten when True.
    # The drop-in has no such module, so the flag must stay False (code then takes NATTEN's non-libnatten path, which
    # still calls natten.na2d).
    assert natten.HAS_LIBNATTEN is False
    _skip_if_a_real_natten_is_installed()
    natten.install()
    with pytest.raises(ImportError):
        from natten import libnatten  # noqa: F401
    natten.uninstall()


# ----------------------------------------------------------------------------------------------------------------
# GPU: the drop-in on CUDA tensors runs visionattn's Triton kernel.

@pytest.mark.cuda
@pytest.mark.parametrize('case', FUSED_CASES, ids=_case_id)
def test_compat_functional_on_cuda_matches_the_op(case):
    spatial, kernel, dilation, stride, causal = case
    n = len(spatial)
    rpb_kernel = None if any(causal) else kernel
    q, k, v, rpb = (None if t is None else t.cuda() for t in _inputs(spatial, dim=16, rpb_kernel=rpb_kernel,
                                                                     dtype=torch.float32, seed=18))
    got = getattr(natten, f'na{n}d')(q, k, v, kernel, stride, dilation, causal, SCALE, rpb=rpb)
    assert torch.equal(got, neighborhood_attention(q, k, v, kernel, dilation, stride, causal, rpb=rpb, scale=SCALE,
                                                   backend='triton'))
    want = oracle(*(t.double().cpu() for t in (q, k, v)), kernel, dilation, stride, causal,
                  None if rpb is None else rpb.double().cpu(), scale=SCALE)
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-2, atol=1e-2)  # fp32 inputs may take TF32 dots
    # The gather paths (additional tokens, two-step ops) on CUDA tensors, in float64, against the CPU oracles.
    gen = torch.Generator().manual_seed(19)
    add_k, add_v = (torch.randn(2, 3, 2, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    q64, k64, v64 = (t.double() for t in (q, k, v))
    rpb64 = None if rpb is None else rpb.double()
    out, lse = getattr(natten, f'na{n}d')(q64, k64, v64, kernel, stride, dilation, causal, SCALE, add_k.cuda(),
                                           add_v.cuda(), rpb=rpb64, return_lse=True)
    want, want_lse = oracle_fused(*(t.cpu() for t in (q64, k64, v64)), kernel, dilation, stride, causal,
                                  None if rpb is None else rpb64.cpu(), SCALE, add_k, add_v)
    torch.testing.assert_close(out.cpu(), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse.cpu(), want_lse.float(), rtol=1e-6, atol=1e-6)
    if stride == (1,) * n:
        qh, kh, vh = _heads_first(q64, k64, v64)
        attn = getattr(functional, f'na{n}d_qk')(qh * SCALE, kh, kernel, dilation, is_causal=causal, rpb=rpb64)
        out = getattr(functional, f'na{n}d_av')(attn.softmax(-1), vh, kernel, dilation, is_causal=causal)
        torch.testing.assert_close(out.movedim(1, -2).cpu(), oracle_fused(
            *(t.cpu() for t in (q64, k64, v64)), kernel, dilation, stride, causal,
            None if rpb is None else rpb64.cpu(), SCALE)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.cuda
def test_compat_module_on_cuda_matches_cpu():
    module = natten.NeighborhoodAttention2D(64, 2, 7, dilation=2, rel_pos_bias=True).eval()
    x = torch.randn(2, 20, 17, 64, generator=torch.Generator().manual_seed(20))
    want = module(x)
    got = module.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-2, atol=1e-2)


def test_readme_example_runs(natten_unloaded, capsys):
    _skip_if_a_real_natten_is_installed()
    readme = (Path(__file__).resolve().parents[1] / 'README.md').read_text()
    section = readme[readme.index('## NATTEN drop-in'):]
    example = re.findall(r'```python\n(.*?)\n```', section, flags=re.S)[1]
    exec(compile(example, 'README.md', 'exec'), {'__name__': 'readme_example'})
    assert sys.modules['natten'] is natten
    assert capsys.readouterr().out.splitlines()[-1] == 'torch.Size([2, 28, 28, 64])'
    natten.uninstall()


# ----------------------------------------------------------------------------------------------------------------
# Fidelity against NATTEN's public API, as its docs show it.

@pytest.mark.parametrize('call', [
    lambda rpb: functional.na2d(_Q2, _Q2, _Q2, 3, is_causal=(True, False), rpb=rpb),
    lambda rpb: natten.na2d(_Q2, _Q2, _Q2, 3, is_causal=True, rpb=rpb),
    lambda rpb: functional.na2d_qk(_Q2_HF, _Q2_HF, 3, is_causal=(False, True), rpb=rpb),
    lambda rpb: functional.na2d(_Q2, _Q2, _Q2, 3, is_causal=True, rpb=rpb, return_lse=True),
], ids=['fused_017', 'fused_020', 'qk', 'gathered'])
def test_causal_rpb_raises_not_implemented_as_natten(call):
    # NATTEN 0.17's fused and two-step ops raise NotImplementedError for a positional bias with a causal axis (its
    # modules as well, which the drop-in's did); the drop-in's functional ops raised ValueError, past a user's
    # `except NotImplementedError`. It is now both.
    with pytest.raises(NotImplementedError, match='causal') as caught:
        call(torch.zeros(2, 5, 5))
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize('heads_last', [True, False])
def test_flops_shape_counters_of_natten_0174(heads_last):
    # NATTEN 0.17.4/0.17.5's docs/flops.md: `from natten.flops import fna_flop_count, na_qk_flop_count,
    # na_av_flop_count` (ImportError before). Each GEMM counts batch * heads * tokens * prod(kernel) * head_dim
    # multiply-adds, FLOPs twice that; causal masking and dilation do not change the count.
    from visionattn.compat.natten.flops import fna_flop_count, na_av_flop_count, na_qk_flop_count
    batch, heads, spatial, dim = 2, 3, (9, 10), 8
    shape = (batch, *spatial, heads, dim) if heads_last else (batch, heads, *spatial, dim)
    macs = batch * heads * 90 * 15 * dim
    args = ((3, 5), (2, 1), (True, False), heads_last)
    assert na_qk_flop_count(shape, shape, *args) == 2 * macs
    assert na_qk_flop_count(torch.Size(shape), shape, *args, return_macs=True) == macs
    assert na_av_flop_count(shape[:-1] + (15,), shape, *args, return_macs=True) == macs
    assert fna_flop_count(shape, shape, shape, *args) == 4 * macs
    assert fna_flop_count(shape, shape, shape, 3, 1, False, heads_last, return_macs=True) == 2 * macs * 9 // 15


def test_experimental_module_of_natten_0174(natten_unloaded):
    # NATTEN 0.17.4/0.17.5's docs/flops.md: `from natten.experimental import na1d, na2d, na3d` (its torch.library
    # ops, 0.17's signature) for torch.compile and torch's FLOP counter; ModuleNotFoundError before.
    _skip_if_a_real_natten_is_installed()
    natten.install()
    from natten.experimental import na2d
    q, k, v, rpb = _inputs((9, 8), rpb_kernel=(3, 3), seed=5)
    torch.testing.assert_close(na2d(q, k, v, 3, 2, False, rpb, SCALE),
                               functional.na2d(q, k, v, 3, dilation=2, rpb=rpb, scale=SCALE), rtol=0, atol=0)
    import natten as imported
    assert imported.experimental.na1d is functional.na1d and imported.experimental.na3d is functional.na3d
    natten.uninstall()


def test_unknown_backend_raises_not_implemented_as_natten_020():
    # NATTEN >= 0.20's na{1,2,3}d end their backend dispatch with NotImplementedError("Unrecognized NATTEN backend")
    # for a name they do not know (an attention backend such as 'cutlass-fmha', a typo); the drop-in raised
    # ValueError only. It is now both.
    with pytest.raises(NotImplementedError, match="backend='cutlass-fmha'") as caught:
        natten.na2d(_Q2, _Q2, _Q2, 3, backend='cutlass-fmha')
    assert isinstance(caught.value, ValueError)
