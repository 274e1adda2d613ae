"""Routed block-sparse attention and bi-level routing attention: reference vs oracles, kernels vs reference."""
import pytest
import torch
from op_testing import DispatchedOps, assert_kernel_close, grads, leaf_copies

from visionattn.ops import BackendUnavailableError, bi_level_routing_attention, block_sparse_attention, bra_routing
from visionattn.ops.block_sparse import bi_level_routing_attention_2d
from visionattn.ops.reference.block_sparse import (
    bi_level_routing_attention_2d_ref,
    bi_level_routing_attention_ref,
    block_sparse_attention_ref,
)

pytestmark = pytest.mark.ops

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if not CUDA or torch.cuda.is_bf16_supported() else [])


def _grad_like(t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random output gradient that does not depend on what ran before (the global RNG's state)."""
    return torch.randn(t.shape, generator=torch.Generator().manual_seed(seed), dtype=t.dtype).to(t.device)


def _dense_oracle(q, k, v, index, count, q_block, kv_block, scale):
    """Attention with a dense token mask built entry by entry from the routing lists (union semantics)."""
    batch, heads, n_q, _ = q.shape
    mask = torch.zeros(batch, heads, n_q, k.shape[2], dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            for i in range(n_q // q_block):
                row = index[b, h % index.shape[1], i]
                n = row.numel() if count is None else int(count[b, h % count.shape[1], i])
                for j in range(n):
                    kv = int(row[j])
                    mask[b, h, i * q_block:(i + 1) * q_block, kv * kv_block:(kv + 1) * kv_block] = True
    logits = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float('-inf'))
    return torch.softmax(logits, -1).nan_to_num(0.0) @ v


def _problem(batch, heads, n_q_blocks, n_kv_blocks, q_block, kv_block, max_kv, d_qk, d_v, shared_heads=False,
             with_count=True, dtype=torch.float64, device='cpu', seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n_q_blocks * q_block, d_qk, generator=gen, dtype=dtype)
    k = torch.randn(batch, heads, n_kv_blocks * kv_block, d_qk, generator=gen, dtype=dtype)
    v = torch.randn(batch, heads, n_kv_blocks * kv_block, d_v, generator=gen, dtype=dtype)
    index_heads = 1 if shared_heads else heads
    # distinct blocks per row (a random permutation's head), then some rows cut short by the count
    index = torch.rand(batch, index_heads, n_q_blocks, n_kv_blocks, generator=gen).argsort(-1)[..., :max_kv]
    count = torch.randint(0, max_kv + 1, (batch, heads, n_q_blocks), generator=gen) if with_count else None
    if count is not None:
        count[0, 0, 0] = max_kv  # at least one full row
        longest = count.amax(1, keepdim=True) if shared_heads else count
        index = index.masked_fill(torch.arange(max_kv) >= longest[..., None], 10 ** 6)  # never read
    return [t.to(device) for t in (q, k, v)], index.to(device), None if count is None else count.to(device)


# ---------------------------------------------------------------------------------------------------------------
# the reference against the dense-mask oracle (float64)

@pytest.mark.parametrize('q_block, kv_block, n_q_blocks, n_kv_blocks, max_kv, shared, with_count', [
    (4, 4, 3, 5, 2, False, True), (9, 7, 2, 4, 3, True, True), (16, 49, 2, 3, 3, False, False),
    (1, 3, 5, 6, 4, True, False), (49, 16, 1, 2, 1, False, True)])
def test_reference_matches_dense_oracle(q_block, kv_block, n_q_blocks, n_kv_blocks, max_kv, shared, with_count):
    (q, k, v), index, count = _problem(2, 3, n_q_blocks, n_kv_blocks, q_block, kv_block, max_kv, 8, 5,
                                       shared_heads=shared, with_count=with_count)
    out = block_sparse_attention(q, k, v, index, count, q_block, kv_block, scale=0.3, backend='reference')
    torch.testing.assert_close(out, _dense_oracle(q, k, v, index, count, q_block, kv_block, 0.3))


def test_duplicates_count_once_and_empty_rows_are_zero():
    (q, k, v), _, _ = _problem(1, 2, 2, 3, 4, 4, 1, 8, 8)
    index = torch.tensor([[[[2, 0, 2, 2], [1, 1, 5, 7]]]])  # row 1: only its first 2 entries count
    count = torch.tensor([[[4, 2], [0, 3]]])  # head 1, row 0: nothing; row 1: entry 5 is out of range
    with pytest.raises(ValueError, match='outside'):
        block_sparse_attention(q, k, v, index, count, 4, 4, backend='reference')
    count[0, 1, 1] = 2
    out = block_sparse_attention(q, k, v, index, count, 4, 4, backend='reference')
    torch.testing.assert_close(out, _dense_oracle(q, k, v, index, count, 4, 4, 8 ** -0.5))
    assert out[0, 1, :4].abs().max() == 0  # a query block with no KV block gets zeros
    unique = torch.tensor([[[[0, 2], [1, 1]]]])  # without counts: row 1 is block 1 twice, i.e. once
    expected = block_sparse_attention(q, k, v, unique, None, 4, 4, backend='reference')
    torch.testing.assert_close(out[:, 0], expected[:, 0])


def test_numpy_scale_is_a_number():
    # NumPy's float32 is a real number (it was refused as 'not a finite number'; float64 passed as a float subclass)
    np = pytest.importorskip('numpy')
    (q, k, v), index, count = _problem(1, 2, 2, 3, 4, 4, 2, 8, 8)
    torch.testing.assert_close(block_sparse_attention(q, k, v, index, count, 4, 4, scale=np.float32(0.5)),
                               block_sparse_attention(q, k, v, index, count, 4, 4, scale=0.5))


@pytest.mark.parametrize('scale', [float('nan'), float('inf'), '0.5', True])
def test_bad_scale_is_refused(scale):
    # Issue 21: scale=nan returned all-NaN attention where neighborhood_attention refuses it.
    (q, k, v), index, count = _problem(1, 2, 2, 3, 4, 4, 2, 8, 8)
    with pytest.raises(ValueError, match='scale'):
        block_sparse_attention(q, k, v, index, count, 4, 4, scale=scale)
    regions = torch.randn(1, 4, 3, 8)  # [B, regions, tokens per region, C]
    with pytest.raises(ValueError, match='scale'):
        bi_level_routing_attention(regions, regions, regions, 2, 1, scale=scale)


def test_bad_inputs_raise_clear_errors():
    (q, k, v), index, count = _problem(1, 2, 2, 3, 4, 4, 2, 8, 8)
    with pytest.raises(ValueError, match='multiple of q_block_size'):
        block_sparse_attention(q, k, v, index, count, 3, 4)
    with pytest.raises(ValueError, match='multiple of kv_block_size'):
        block_sparse_attention(q, k, v, index, count, 4, 5)
    with pytest.raises(ValueError, match='kv_block_index has shape'):
        block_sparse_attention(q, k, v, index[:, :, :1], count, 4, 4)
    with pytest.raises(TypeError, match='integer tensor'):
        block_sparse_attention(q, k, v, index.float(), count, 4, 4)
    with pytest.raises(ValueError, match='kv_block_count must lie'):
        block_sparse_attention(q, k, v, index, count + 3, 4, 4)
    with pytest.raises(ValueError, match='outside'):
        block_sparse_attention(q, k, v, -index.abs() - 1, None, 4, 4)
    with pytest.raises(ValueError, match='positive int'):
        block_sparse_attention(q, k, v, index, count, 0, 4)
    with pytest.raises(TypeError, match='one floating dtype'):
        block_sparse_attention(q, k.float(), v, index, count, 4, 4)
    with pytest.raises(ValueError, match='shapes do not agree'):
        block_sparse_attention(q, k[..., :4], v, index, count, 4, 4)
    with pytest.raises(ValueError, match='unknown backend'):
        block_sparse_attention(q, k, v, index, count, 4, 4, backend='cutlass')
    if not CUDA:
        with pytest.raises(BackendUnavailableError, match='float64'):
            block_sparse_attention(q, k, v, index, count, 4, 4, backend='triton')
    x = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match='topk=5'):
        bi_level_routing_attention(x, x, x, 2, 5)
    with pytest.raises(ValueError, match='num_heads=3'):
        bi_level_routing_attention(x, x, x, 3, 2)
    with pytest.raises(ValueError, match='expected q, k'):
        bi_level_routing_attention(x, x[:, :2], x, 2, 1)


# ---------------------------------------------------------------------------------------------------------------
# Triton kernels against the reference (CPU: the interpreter, tiny shapes)

KERNEL_CASES = [  # q_block, kv_block, nQ, nKV, max_kv, d_qk, d_v, shared heads, with count
    (16, 16, 2, 3, 2, 16, 16, False, True),
    (9, 9, 2, 4, 3, 20, 12, True, True),
    (49, 49, 1, 3, 2, 32, 32, True, False),
    (4, 4, 4, 9, 5, 32, 16, True, False),  # BiFormer stage-3-like: 2x2 regions, several blocks per tile
    (16, 49, 2, 2, 2, 16, 40, False, True),
    (64, 16, 1, 5, 3, 24, 24, False, True),  # several query tiles? no: one 64-row tile, kv blocks packed
]


def _compare_kernel(case, dtype, device='cpu', batch=1, heads=2, seed=0):
    q_block, kv_block, n_q, n_kv, max_kv, d_qk, d_v, shared, with_count = case
    (q, k, v), index, count = _problem(batch, heads, n_q, n_kv, q_block, kv_block, max_kv, d_qk, d_v,
                                       shared_heads=shared, with_count=with_count, dtype=torch.float32,
                                       device=device, seed=seed)
    run = lambda tensors, backend: block_sparse_attention(  # noqa: E731
        *tensors, index, count, q_block, kv_block, scale=0.7, backend=backend)
    # the oracle runs in float64, so that float32's own rounding shows as the PyTorch error
    kernel_in, torch_in, ref_in = leaf_copies([q, k, v], dtype), leaf_copies([q, k, v], dtype), \
        leaf_copies([q, k, v], torch.float64)
    for t in kernel_in + torch_in + ref_in:
        t.requires_grad_(True)
    out_kernel, out_torch, out_ref = run(kernel_in, 'triton'), run(torch_in, 'reference'), run(ref_in, 'reference')
    grad_out = _grad_like(out_ref)
    g_kernel = grads(out_kernel, kernel_in, grad_out.to(dtype))
    g_torch = grads(out_torch, torch_in, grad_out.to(dtype))
    g_ref = grads(out_ref, ref_in, grad_out)
    assert_kernel_close(out_kernel, out_torch, out_ref, f'out {case} {dtype}')
    for i, name in enumerate('qkv'):
        assert_kernel_close(g_kernel[i], g_torch[i], g_ref[i], f'd{name} {case} {dtype}')


@pytest.mark.parametrize('case', KERNEL_CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_kernel_matches_reference(case, dtype):
    _compare_kernel(case, dtype)


@pytest.mark.parametrize('case', KERNEL_CASES[1:3])
def test_kernel_bfloat16(case):
    _compare_kernel(case, torch.bfloat16)


def test_kernel_backward_is_deterministic():
    (q, k, v), index, count = _problem(1, 2, 3, 4, 4, 4, 3, 16, 16, dtype=torch.float32)
    results = []
    for _ in range(2):
        leaves = leaf_copies([q, k, v], torch.float16)
        for t in leaves:
            t.requires_grad_(True)
        out = block_sparse_attention(*leaves, index, count, 4, 4, backend='triton')
        results.append([out] + list(grads(out, leaves, torch.ones_like(out)).values()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_custom_op_registration():
    from visionattn.ops.triton.block_sparse import _bsa_fwd_op
    (q, k, v), index, _ = _problem(1, 2, 2, 3, 16, 16, 2, 16, 16, with_count=False, dtype=torch.float32)
    index = index.to(torch.int32)  # the raw op trusts its index: the public function validates it
    torch.library.opcheck(_bsa_fwd_op, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), index, None,
                                        16, 16, 0.25))


def test_inverted_index_lists_every_routed_query_block():
    from visionattn.ops.triton.block_sparse import inverted_block_index
    index = torch.tensor([[[[2, 0], [1, 2], [2, 9]]]], dtype=torch.int32)  # row 2: only its first entry counts
    count = torch.tensor([[[2, 2, 1]]], dtype=torch.int32)
    entries, offsets, heads = inverted_block_index(index, count, 3)
    assert heads == 1 and offsets.tolist() == [0, 1, 2, 5]  # groups (row 0, KV block 0..3 = ignored entries)
    assert (entries.flatten()[:5] // 2).tolist() == [0, 1, 0, 1, 2]  # query blocks routed to KV blocks 0, 1, 2
    index = torch.tensor([[[[1], [0]]], [[[0], [0]]]])  # two batch rows, sorted separately
    entries, offsets, heads = inverted_block_index(index, None, 2)
    assert offsets.tolist() == [0, 1, 2, 2, 4, 4] and entries.tolist() == [[1, 0], [0, 1]]


# ---------------------------------------------------------------------------------------------------------------
# bi-level routing attention against a direct transcription of the official math

def _bra_transcription(q, k, v, num_heads, topk, scale):
    """BRA written out per query region and head, from the BiFormer paper and ops/bra_legacy.py (float64)."""
    batch, regions, tokens, c_qk = q.shape
    hd_qk, hd_v = c_qk // num_heads, v.shape[-1] // num_heads
    out = torch.empty_like(v)
    for b in range(batch):
        region_q, region_k = q[b].mean(1), k[b].mean(1)  # [R, C]
        routed = torch.topk((region_q * scale) @ region_k.T, topk, dim=-1).indices  # [R, topk]
        for r in range(regions):
            keys = torch.cat([k[b, j] for j in routed[r].tolist()])  # [topk*T, C]
            values = torch.cat([v[b, j] for j in routed[r].tolist()])
            for h in range(num_heads):
                qh = q[b, r, :, h * hd_qk:(h + 1) * hd_qk]
                kh, vh = keys[:, h * hd_qk:(h + 1) * hd_qk], values[:, h * hd_v:(h + 1) * hd_v]
                out[b, r, :, h * hd_v:(h + 1) * hd_v] = torch.softmax(qh * scale @ kh.T, -1) @ vh
    return out


@pytest.mark.parametrize('regions, tokens, heads, c_qk, c_v, topk', [(9, 4, 2, 16, 16, 3), (4, 9, 3, 24, 12, 4)])
def test_bra_matches_official_transcription(regions, tokens, heads, c_qk, c_v, topk):
    torch.manual_seed(0)
    q, k = torch.randn(2, regions, tokens, c_qk, dtype=torch.float64), torch.randn(2, regions, tokens, c_qk,
                                                                                  dtype=torch.float64)
    v = torch.randn(2, regions, tokens, c_v, dtype=torch.float64)
    expected = _bra_transcription(q, k, v, heads, topk, c_qk ** -0.5)  # default scale: the full-qk-dim quirk
    out, routing = bi_level_routing_attention(q, k, v, heads, topk, backend='reference', return_routing=True)
    torch.testing.assert_close(out, expected)
    assert routing.shape == (2, regions, topk)
    torch.testing.assert_close(routing, bra_routing(q, k, topk, 1.0))
    kernel = bi_level_routing_attention(q.float(), k.float(), v.float(), heads, topk, backend='triton')
    torch.testing.assert_close(kernel, expected.float(), atol=1e-5, rtol=1e-5)


def test_bra_kernel_gradients_on_strided_inputs():
    """The module hands in q/k/v as column slices of one qkv projection: strided views reach the kernel."""
    torch.manual_seed(0)
    regions, tokens, heads, c = 9, 4, 2, 32
    qkv = torch.randn(2, regions, tokens, 3 * c)
    routing = None
    results = {}
    for name, dtype, backend in (('kernel', torch.float16, 'triton'), ('torch', torch.float16, 'reference'),
                                 ('ref', torch.float32, 'reference')):
        leaf = qkv.to(dtype).requires_grad_(True)
        q, k, v = leaf.split(c, dim=-1)
        out, routing_now = bi_level_routing_attention(q, k, v, heads, 3, backend=backend, return_routing=True)
        if name == 'kernel':
            routing = routing_now
        if name != 'ref':
            assert torch.equal(routing_now, routing)  # same dtype, same routing
        results[name] = (out, torch.autograd.grad(out, leaf, torch.ones_like(out))[0])
    # the fp32 oracle must follow the fp16 routing (routing is computed in the inputs' dtype)
    q, k, v = qkv.requires_grad_(True).split(c, dim=-1)
    out_ref = bi_level_routing_attention_ref(q, k, v, heads, 3, c ** -0.5, routing_index=routing)
    results['ref'] = (out_ref, torch.autograd.grad(out_ref, qkv, torch.ones_like(out_ref))[0])
    for i, what in enumerate(('out', 'dqkv')):
        assert_kernel_close(results['kernel'][i], results['torch'][i], results['ref'][i], what)


def test_bra_flops_are_counted_as_the_official_code_computes():
    from torch.utils.flop_counter import FlopCounterMode
    batch, regions, tokens, c, topk = 1, 49, 16, 128, 4
    q = torch.empty(batch, regions, tokens, c, device='meta')
    with FlopCounterMode(display=False) as counter:
        out = bi_level_routing_attention(q, q, q, 4, topk)
    assert out.shape == q.shape and out.device.type == 'meta'
    routing = regions * regions * c
    attention = 2 * regions * tokens * topk * tokens * c  # QK^T and PV over the routed tokens, all heads
    assert counter.get_total_flops() == 2 * (routing + attention)


def test_reference_upcast_keeps_dtype():
    (q, k, v), index, count = _problem(1, 2, 2, 3, 4, 4, 2, 8, 8, dtype=torch.float16)
    out = block_sparse_attention_ref(q, k, v, index.clamp_max(2), count, 4, 4, 0.5, upcast=True)
    assert out.dtype == torch.float16


# ---------------------------------------------------------------------------------------------------------------
# BRA on NHWC maps (the module's path): regions, q/k/v and the LCE read in place from the qkv projection's output

def _map_problem(batch, height, width, qk_dim, c_v, lepe_size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, height, width, 2 * qk_dim + c_v, generator=gen)
    if not lepe_size:
        return qkv, None, None
    return qkv, 0.2 * torch.randn(c_v, 1, lepe_size, lepe_size, generator=gen), torch.randn(c_v, generator=gen)


def _bra_2d(tensors, heads, n_win, topk, qk_dim, backend, routing=None):
    qkv, weight, bias = tensors
    if routing is not None:  # the reference, made to follow the kernel's routing (computed in its own dtype)
        return bi_level_routing_attention_2d_ref(qkv, heads, n_win, topk, qk_dim, qk_dim ** -0.5, weight, bias,
                                                 routing_index=routing)
    return bi_level_routing_attention_2d(qkv, heads, n_win, topk, qk_dim, None, weight, bias, backend=backend,
                                         return_routing=True)


MAP_CASES = [  # batch, height, width, n_win, heads, qk_dim, c_v, topk, lepe kernel
    (1, 6, 9, 3, 2, 16, 16, 3, 3),  # 2x3 regions (6 tokens, not a power of two), qk_dim == c_v
    (2, 4, 4, 2, 2, 24, 16, 2, 5),  # a 5x5 conv wider than the regions, qk_dim != c_v, two images
    (1, 8, 4, 2, 1, 16, 32, 4, 0),  # no LCE, routing to every region
    (1, 4, 132, 2, 1, 8, 8, 1, 3),  # a map wider than the LCE gradient's 128-pixel tiles
]


@pytest.mark.parametrize('case', MAP_CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_bra_2d_kernel_matches_reference(case, dtype):
    """Forward and every gradient (qkv, LCE weight and bias) against the official computation, by the kernel rule."""
    batch, height, width, n_win, heads, qk_dim, c_v, topk, lepe = case
    base = _map_problem(batch, height, width, qk_dim, c_v, lepe)
    leaves = {name: leaf_copies([base[0]], dt) + leaf_copies(base[1:], torch.float32 if dt != torch.float64 else dt)
              for name, dt in (('kernel', dtype), ('torch', dtype), ('ref', torch.float64))}
    for tensors in leaves.values():
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    out_kernel, routing = _bra_2d(leaves['kernel'], heads, n_win, topk, qk_dim, 'triton')
    out_torch, routing_torch = _bra_2d(leaves['torch'], heads, n_win, topk, qk_dim, 'reference')
    assert routing.dtype == torch.int64 and routing.shape == (batch, n_win * n_win, topk)
    assert torch.equal(routing, routing_torch)  # same dtype, same routing (no near-ties in these problems)
    out_ref, _ = _bra_2d(leaves['ref'], heads, n_win, topk, qk_dim, 'reference', routing=routing)
    grad_out = _grad_like(out_ref)
    assert_kernel_close(out_kernel, out_torch, out_ref, f'out {case} {dtype}')
    present = [i for i, t in enumerate(leaves['ref']) if t is not None]
    g = {name: grads(out, [leaves[name][i] for i in present], grad_out.to(out.dtype))
         for name, out in (('kernel', out_kernel), ('torch', out_torch), ('ref', out_ref))}
    for i, name in zip(range(len(present)), ('dqkv', 'dweight', 'dbias')):
        assert_kernel_close(g['kernel'][i], g['torch'][i].to(g['kernel'][i].dtype), g['ref'][i],
                            f'{name} {case} {dtype}', atol=ATOL_LEPE.get((name, dtype)))


ATOL_LEPE = {('dweight', torch.float16): 2e-2, ('dbias', torch.float16): 2e-2}  # sums over every pixel, in float32


def test_bra_2d_bfloat16_and_strided_qkv():
    """bfloat16, and qkv as a channel slice of a wider tensor (only its channel stride must be 1)."""
    case = MAP_CASES[0]
    batch, height, width, n_win, heads, qk_dim, c_v, topk, lepe = case
    qkv, weight, bias = _map_problem(batch, height, width, qk_dim, c_v, lepe, seed=1)
    wide = torch.cat([qkv, torch.randn(*qkv.shape[:3], 5)], -1)
    results = {}
    for name, dtype, backend in (('kernel', torch.bfloat16, 'triton'), ('torch', torch.bfloat16, 'reference'),
                                 ('ref', torch.float64, 'reference')):
        leaf = wide.to(dtype).requires_grad_(True)
        params = [t.to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_(True)
                  for t in (weight, bias)]
        routing = results['kernel'][-1] if name == 'ref' else None
        out, route = _bra_2d([leaf[..., :qkv.shape[-1]]] + params, heads, n_win, topk, qk_dim, backend, routing)
        results[name] = (out, *torch.autograd.grad(out, [leaf] + params, torch.ones_like(out)), route)
    for i, what in enumerate(('out', 'dqkv', 'dweight', 'dbias')):
        assert_kernel_close(results['kernel'][i], results['torch'][i].to(results['kernel'][i].dtype),
                            results['ref'][i], what, atol={'dweight': 0.25, 'dbias': 0.25}.get(what))
    assert results['kernel'][1][..., qkv.shape[-1]:].abs().max() == 0  # the extra channels get no gradient


def test_bra_2d_routing_kernel_and_its_inversion():
    """The routing kernel's top-k equals torch.topk of the official affinities, best first; its inverted lists
    (for each key region, the query regions routed to it, ascending) are exactly the routing's transpose."""
    from visionattn.ops.triton import block_sparse as tk
    batch, n_win, topk, qk_dim = 2, 3, 4, 16
    qkv, _, _ = _map_problem(batch, 6, 9, qk_dim, 8, 0, seed=2)
    _, ibuf = tk._bra_triton(qkv, None, None, None, None, n_win, 2, topk, qk_dim, 0.3)
    regions = n_win * n_win
    size = batch * regions * topk
    routing = ibuf[:size].view(batch, regions, topk).long()
    regions_qkv = qkv.reshape(batch, n_win, 2, n_win, 3, -1).transpose(2, 3).reshape(batch, regions, 6, -1)
    assert torch.equal(routing, bra_routing(regions_qkv[..., :qk_dim], regions_qkv[..., qk_dim:2 * qk_dim], topk, 0.3))
    lists, starts = ibuf[size:2 * size], ibuf[2 * size:].view(batch, regions + 1)
    for b in range(batch):
        assert starts[b, 0] == b * regions * topk and starts[b, -1] == (b + 1) * regions * topk
        for j in range(regions):
            routed_here = [i for i in range(regions) if j in routing[b, i].tolist()]
            assert lists[starts[b, j]:starts[b, j + 1]].tolist() == routed_here


def test_bra_2d_torch_routing_fallback_matches_the_routing_kernel(monkeypatch):
    """Maps of more regions than the routing kernel holds route with PyTorch ops: same results, same gradients."""
    from visionattn.ops.triton import block_sparse as tk
    qkv, weight, bias = _map_problem(1, 6, 6, 16, 16, 3, seed=3)
    results = []
    for limit in (tk.MAX_FUSED_ROUTING_REGIONS, 4):
        monkeypatch.setattr(tk, 'MAX_FUSED_ROUTING_REGIONS', limit)
        monkeypatch.setattr(tk, '_PLANS', {})
        leaves = [t.clone().requires_grad_(True) for t in (qkv, weight, bias)]
        out, routing = bi_level_routing_attention_2d(leaves[0], 2, 3, 3, 16, None, *leaves[1:], backend='triton',
                                                     return_routing=True)
        results.append([out, routing, *torch.autograd.grad(out.square().sum(), leaves)])
        assert tk._PLANS and all(plan.fused_routing == (limit > 9) for plan in tk._PLANS.values())
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bra_2d_host_path_makes_no_copies(monkeypatch):
    """Between the projections the op allocates its outputs and launches kernels, nothing else: no copy, cat,
    zero-fill or elementwise op, forward or backward (the LCE conv's weight gradient is one sum of partials)."""
    from visionattn.ops.triton import block_sparse as tk
    launches = []
    monkeypatch.setattr(tk.Kernel, 'launch', lambda self, *args: launches.append(self.fn.fn.__name__))


    qkv, weight, bias = (t.requires_grad_(True) for t in _map_problem(2, 6, 6, 16, 16, 3))
    out = bi_level_routing_attention_2d(qkv, 2, 3, 3, 16, None, weight, bias, backend='triton')  # plans the shape
    out.sum().backward()
    launches.clear()
    allocations = {'empty.memory_format', 'new_empty.default', 'empty_strided.default'}
    allowed = allocations | {'detach.default', 'view.default', 'slice.Tensor', 'alias.default'}
    with DispatchedOps() as forward:
        out = bi_level_routing_attention_2d(qkv, 2, 3, 3, 16, None, weight, bias, backend='triton')
    assert launches == ['_bra_route_kernel', '_bsa_fwd_kernel']
    assert set(forward.names) <= allowed, forward.names
    assert sum(name in allocations for name in forward.names) == 4  # routing, output, attention alone, lse
    launches.clear()
    grad = torch.ones_like(out)
    with DispatchedOps() as backward:
        torch.autograd.grad(out, (qkv, weight, bias), grad)
    assert launches == ['_bsa_bwd_dq_kernel', '_bsa_bwd_dkv_kernel', '_lepe_grad_kernel']
    kernels = [name for name in backward.names if name not in allowed]
    assert kernels == ['sum.dim_IntList'], backward.names


def test_compiled_handle_launch_passes_runtime_arguments_then_constexprs(monkeypatch):
    """The fast launch path (CUDA only) checked with a stand-in JIT: the first launch goes through the JIT and keeps
    its compiled handle; later launches call the handle with the runtime arguments, then every constexpr in
    declaration order (the launcher's convention since Triton 3.2), on a three-axis grid."""
    from visionattn.ops.triton import block_sparse as tk
    calls = []

    class Handle:
        def __init__(self, n_params):
            self.src = type('Src', (), {'signature': dict.fromkeys(range(n_params), 'i32')})()

        def __getitem__(self, grid):
            return lambda *args: calls.append(('handle', grid, args))

    kernel = tk.Kernel(tk._bra_route_kernel)
    assert kernel.constexpr_names == ('R', 'T', 'TOPK', 'GRID_W', 'BLK_W', 'C_QK', 'R_PAD', 'T_STEP', 'BLOCK_C',
                                      'IEEE')
    n_runtime = 18
    handle = Handle(n_runtime + len(kernel.constexpr_names))

    class Jit:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                calls.append(('jit', grid, args, kwargs))
                return handle
            return run

    monkeypatch.setattr(kernel, 'fn', Jit())
    from visionattn.ops.triton import launch
    monkeypatch.setattr(launch, 'FAST_LAUNCH', True)
    monkeypatch.setattr(launch, '_interpreting', lambda: False)
    # launch_compiled goes to the compiled kernel's launcher; the stand-in takes the same arguments through [grid]
    monkeypatch.setattr(launch, 'launch_compiled', lambda compiled, grid, args: compiled[grid](*args))
    consts = {name: i for i, name in enumerate(reversed(kernel.constexpr_names))}
    slot, args = [None, None], tuple(range(100, 100 + n_runtime))
    for _ in range(2):
        kernel.launch(slot, (3, 1, 1), args, consts, 8, 3)
    assert calls[0] == ('jit', (3, 1, 1), args, dict(consts, num_warps=8, num_stages=3))
    assert calls[1] == ('handle', (3, 1, 1), args + tuple(consts[name] for name in kernel.constexpr_names))
    slot = [None, None]  # a launcher of another convention (fewer parameters) keeps the JIT path
    handle = Handle(n_runtime)
    for _ in range(2):
        kernel.launch(slot, (3, 1, 1), args, consts, 8, 3)
    assert [call[0] for call in calls[2:]] == ['jit', 'jit'] and slot[0] is None


def test_bra_2d_plans_are_cached_per_shape():
    from visionattn.ops.triton import block_sparse as tk
    qkv, weight, bias = _map_problem(1, 6, 6, 16, 16, 3)
    plan = tk._bra_plan(qkv, None, None, weight, bias, 3, 2, 3, 16)
    assert tk._bra_plan(qkv.clone(), None, None, weight, bias, 3, 2, 3, 16) is plan
    assert tk._bra_plan(qkv[:, :, :, :40], None, None, weight[:8], bias[:8], 3, 2, 3, 16) is not plan  # strides
    assert tk._bra_plan(qkv, None, None, weight, bias, 3, 2, 2, 16) is not plan  # top-k


def test_bra_2d_custom_op_registration():
    """The ops torch.compile sees: schema, fake (meta) implementations and autograd, checked by opcheck."""
    from visionattn.ops.triton.block_sparse import _bra_fwd_op
    qkv, weight, bias = _map_problem(1, 2, 4, 16, 16, 1)
    torch.library.opcheck(_bra_fwd_op, (qkv.requires_grad_(), None, None, weight.requires_grad_(),
                                        bias.requires_grad_(), 2, 1, 2, 16, 0.25, True))
    q, k, v = torch.randn(1, 4, 2, 16).requires_grad_(), torch.randn(1, 4, 2, 16), torch.randn(1, 4, 2, 16)
    torch.library.opcheck(_bra_fwd_op, (q, k, v, None, None, 1, 1, 2, 16, 0.25, False))


def test_bra_2d_compiles_fullgraph_without_recompiles():
    """Under torch.compile(fullgraph=True) the op is one custom op forward and one backward: no graph break, no
    recompilation at a fixed shape, the same results as eager."""
    import torch._dynamo
    torch._dynamo.reset()
    qkv, weight, bias = _map_problem(1, 4, 6, 16, 16, 3)

    def bra(qkv, weight, bias):
        return bi_level_routing_attention_2d(qkv, 2, 2, 2, 16, None, weight, bias, backend='triton')

    compiled = torch.compile(bra, backend='aot_eager', fullgraph=True)
    leaves = [t.clone().requires_grad_(True) for t in (qkv, weight, bias)]
    expected = bra(*leaves)
    expected_grads = torch.autograd.grad(expected.square().sum(), leaves)
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = compiled(*leaves)
        grads_ = torch.autograd.grad(out.square().sum(), leaves)
        compiled(*[t.clone().requires_grad_(True) for t in (qkv + 1, weight, bias)]).sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for a, b in zip(grads_, expected_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch._dynamo.reset()


def test_bra_2d_bad_inputs():
    qkv = torch.randn(1, 6, 6, 48)
    with pytest.raises(ValueError, match='not a positive multiple of n_win=4'):
        bi_level_routing_attention_2d(qkv, 2, 4, 2)
    with pytest.raises(ValueError, match='num_heads=5'):
        bi_level_routing_attention_2d(qkv, 5, 3, 2)
    with pytest.raises(ValueError, match=r'topk=10 must be an int in \[1, 9\]'):
        bi_level_routing_attention_2d(qkv, 2, 3, 10)
    with pytest.raises(ValueError, match='k odd'):
        bi_level_routing_attention_2d(qkv, 2, 3, 2, lepe_weight=torch.randn(16, 1, 4, 4))
    with pytest.raises(ValueError, match='too few'):
        bi_level_routing_attention_2d(qkv, 2, 3, 2, qk_dim=24)
    # found by the adversarial probe: a bias without its conv was dropped; float counts passed the divisibility
    # checks (then ran, or failed in a reshape)
    with pytest.raises(ValueError, match='lepe_bias is given without lepe_weight'):
        bi_level_routing_attention_2d(qkv, 2, 3, 2, lepe_bias=torch.randn(16))
    for kwargs, name in ((dict(num_heads=2.0), 'num_heads'), (dict(n_win=True), 'n_win'),
                         (dict(qk_dim=16.0), 'qk_dim'), (dict(num_heads=0), 'num_heads')):
        args = dict(dict(num_heads=2, n_win=3, topk=2), **kwargs)
        with pytest.raises(ValueError, match=f'{name}=.* must be an int >= 1'):
            bi_level_routing_attention_2d(qkv, **args)
    regions = torch.randn(1, 4, 3, 8)
    with pytest.raises(ValueError, match='num_heads=2.0 must be an int'):
        bi_level_routing_attention(regions, regions, regions, 2.0, 1)
    empty = torch.randn(1, 4, 0, 8)
    with pytest.raises(ValueError, match='regions hold no tokens'):
        bi_level_routing_attention(empty, empty, empty, 2, 1)
    heads_only = torch.randn(1, 2, 8, 0)
    with pytest.raises(ValueError, match='head dim is 0'):
        block_sparse_attention(heads_only, heads_only, torch.randn(1, 2, 8, 4),
                               torch.zeros(1, 2, 2, 1, dtype=torch.int32), None, 4, 4)


def test_int64_routing_past_int32_is_refused_not_wrapped():
    # Adversarial probe: without counts the range check ran on the int32 lists made from the routing, where an int64
    # entry of 2**32 + 1 had wrapped to block 1: attention silently read block 1
    q = torch.randn(1, 1, 8, 4)
    for big in (2 ** 32 + 1, 2 ** 31):
        with pytest.raises(ValueError, match=r'kv_block_index has entries outside \[0, 2\)'):
            block_sparse_attention(q, q, q, torch.tensor([[[[0], [big]]]]), None, 4, 4)
    # entries past a row's count are still ignored, whatever they hold
    out = block_sparse_attention(q, q, q, torch.tensor([[[[0, 2 ** 32 + 1], [1, -5]]]]), torch.tensor([[[1, 1]]]),
                                 4, 4)
    torch.testing.assert_close(out, block_sparse_attention(q, q, q, torch.tensor([[[[0], [1]]]]), None, 4, 4))


def test_bra_numpy_topk_is_a_count():
    # Adversarial probe: a NumPy integer topk was refused as 'must be an int' (n_win and num_heads took one), so a
    # BiLevelRoutingAttention built from a config array failed at its first forward
    np = pytest.importorskip('numpy')
    qkv = torch.randn(1, 6, 6, 48)
    torch.testing.assert_close(bi_level_routing_attention_2d(qkv, 2, 3, np.int64(2)),
                               bi_level_routing_attention_2d(qkv, 2, 3, 2))
    regions = torch.randn(1, 4, 3, 8)
    torch.testing.assert_close(bi_level_routing_attention(regions, regions, regions, 2, np.int32(3)),
                               bi_level_routing_attention(regions, regions, regions, 2, 3))
    with pytest.raises(ValueError, match=r'topk=2.0 must be an int in \[1, 9\]'):
        bi_level_routing_attention_2d(qkv, 2, 3, 2.0)


# ---------------------------------------------------------------------------------------------------------------
# causal (MoBA's self block): no key after the query, by token index

def _causal_oracle(q, k, v, index, count, block, scale):
    """The dense-mask oracle with the lower-triangular token mask on top; rows with no key are zero."""
    batch, heads, n, _ = q.shape
    mask = torch.zeros(batch, heads, n, n, dtype=torch.bool)
    for b in range(batch):
        for h in range(heads):
            for i in range(n // block):
                row = index[b, h % index.shape[1], i]
                for j in range(row.numel() if count is None else int(count[b, h % count.shape[1], i])):
                    mask[b, h, i * block:(i + 1) * block, int(row[j]) * block:(int(row[j]) + 1) * block] = True
    mask &= torch.ones(n, n, dtype=torch.bool).tril()
    logits = (q @ k.transpose(-2, -1) * scale).masked_fill(~mask, float('-inf'))
    return torch.softmax(logits, -1).nan_to_num(0.0) @ v


@pytest.mark.parametrize('block, n_blocks, max_kv, shared, with_count', [(4, 4, 3, False, True), (7, 3, 3, True, False),
                                                                         (5, 5, 2, True, True)])
def test_causal_reference_matches_dense_oracle(block, n_blocks, max_kv, shared, with_count):
    (q, k, v), index, count = _problem(2, 3, n_blocks, n_blocks, block, block, max_kv, 8, 5, shared_heads=shared,
                                       with_count=with_count)
    out = block_sparse_attention(q, k, v, index, count, block, block, scale=0.3, backend='reference', causal=True)
    torch.testing.assert_close(out, _causal_oracle(q, k, v, index, count, block, 0.3))


def test_causal_needs_equal_block_sizes():
    (q, k, v), index, count = _problem(1, 2, 2, 2, 4, 4, 2, 8, 8)
    with pytest.raises(ValueError, match='causal=True needs q_block_size == kv_block_size'):
        block_sparse_attention(q, k, v, index, count, 4, 2, causal=True)


CAUSAL_CASES = [  # block, n_blocks, max_kv, d, shared heads, with count
    (16, 3, 2, 16, False, True),
    (9, 4, 3, 20, True, False),  # odd block: the diagonal crosses tile edges
    (32, 2, 2, 32, True, True),
]


@pytest.mark.parametrize('case', CAUSAL_CASES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_causal_kernel_matches_reference(case, dtype):
    block, n_blocks, max_kv, dim, shared, with_count = case
    (q, k, v), index, count = _problem(1, 2, n_blocks, n_blocks, block, block, max_kv, dim, dim, shared_heads=shared,
                                       with_count=with_count, dtype=torch.float32, seed=3)
    results = {}
    for name, dt, backend in (('kernel', dtype, 'triton'), ('torch', dtype, 'reference'),
                              ('ref', torch.float64, 'reference')):
        leaves = leaf_copies([q, k, v], dt)
        for t in leaves:
            t.requires_grad_(True)
        out = block_sparse_attention(*leaves, index, count, block, block, scale=0.7, backend=backend, causal=True)
        results[name] = (out, leaves)
    grad_out = _grad_like(results['ref'][0])
    g = {name: grads(out, leaves, grad_out.to(out.dtype)) for name, (out, leaves) in results.items()}
    assert_kernel_close(results['kernel'][0], results['torch'][0], results['ref'][0], f'causal out {case} {dtype}')
    for i, name in enumerate('qkv'):
        assert_kernel_close(g['kernel'][i], g['torch'][i], g['ref'][i], f'causal d{name} {case} {dtype}')


# ---------------------------------------------------------------------------------------------------------------
# GPU, real sizes

@pytest.mark.cuda
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('case', [(49, 49, 16, 16, 4, 32, 32, True, False), (64, 64, 12, 49, 3, 64, 32, False, True),
                                  (16, 16, 49, 49, 4, 32, 32, True, False), (4, 4, 49, 49, 16, 32, 32, True, False),
                                  (256, 256, 4, 64, 4, 128, 128, True, True), (25, 9, 7, 30, 6, 80, 48, False, True)])
def test_kernel_matches_reference_cuda(case, dtype):
    _compare_kernel(case, dtype, device='cuda', batch=3, heads=4, seed=1)


def _assert_routing_valid(routing, q, k, scale):
    """Each row routes to distinct regions whose affinities are its top-k, up to rounding in q's dtype (the kernel's
    float32 sums may round a near-tie the other way than PyTorch's)."""
    q_mean, k_mean = q.double().mean(2), k.double().mean(2)
    logits = (q_mean * scale) @ k_mean.transpose(-2, -1)
    slack = 8 * torch.finfo(q.dtype).eps * ((q_mean.abs() * scale) @ k_mean.abs().transpose(-2, -1)).amax(-1)
    chosen = logits.gather(-1, routing).amin(-1)
    others = logits.scatter(-1, routing, float('-inf')).amax(-1)
    assert (routing.sort(-1).values.diff(dim=-1) > 0).all()
    assert (chosen >= others - slack).all()


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('stage', [(49, 64, 2, 1), (49, 16, 4, 4), (49, 4, 8, 16), (64, 256, 2, 1), (64, 64, 4, 4)])
def test_bra_biformer_shapes_cuda(stage, dtype):
    """BiFormer-S BRA stages at 224 (7x7 regions of 8x8, 4x4, 2x2 tokens) and 512 (8x8 regions of 16x16, 8x8)."""
    regions, tokens, heads, topk = stage
    c = heads * 32
    torch.manual_seed(0)
    qkv = torch.randn(8, regions, tokens, 3 * c, device='cuda')
    leaves = {name: qkv.to(dt).requires_grad_(True) for name, dt in (('kernel', dtype), ('torch', dtype),
                                                                     ('ref', torch.float32))}
    outs, dqkv = {}, {}
    q, k, v = leaves['kernel'].split(c, dim=-1)
    outs['kernel'], routing = bi_level_routing_attention(q, k, v, heads, topk, backend='triton', return_routing=True)
    _assert_routing_valid(routing, q.detach(), k.detach(), c ** -0.5)
    for name in ('torch', 'ref'):  # the references follow the kernel's routing
        q, k, v = leaves[name].split(c, dim=-1)
        outs[name] = bi_level_routing_attention_ref(q, k, v, heads, topk, c ** -0.5, routing_index=routing)
    grad_out = _grad_like(outs['ref'])
    for name, leaf in leaves.items():
        dqkv[name] = torch.autograd.grad(outs[name], leaf, grad_out.to(leaf.dtype))[0]
    assert_kernel_close(outs['kernel'], outs['torch'], outs['ref'], f'out {stage}')
    assert_kernel_close(dqkv['kernel'], dqkv['torch'], dqkv['ref'], f'dqkv {stage}')


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('stage', [(56, 7, 2, 64, 1), (28, 7, 4, 128, 4), (14, 7, 8, 256, 16), (128, 8, 2, 64, 1),
                                   (64, 8, 4, 128, 4), (60, 6, 3, 96, 5)])
def test_bra_2d_biformer_shapes_cuda(stage, dtype):
    """The module's op at BiFormer's stage shapes (224 and 512 maps; BiFormer-B's 96 channels): NHWC qkv read in
    place, the LCE folded in; output and gradients (qkv, conv weight and bias) by the kernel rule."""
    size, n_win, heads, c, topk = stage
    torch.manual_seed(0)
    qkv = torch.randn(8, size, size, 3 * c, device='cuda')
    weight, bias = 0.2 * torch.randn(c, 1, 5, 5, device='cuda'), torch.randn(c, device='cuda')
    leaves = {name: [qkv.to(dt).requires_grad_(True), weight.clone().requires_grad_(True),
                     bias.clone().requires_grad_(True)] for name, dt in (('kernel', dtype), ('torch', dtype),
                                                                         ('ref', torch.float32))}
    out_kernel, routing = _bra_2d(leaves['kernel'], heads, n_win, topk, c, 'triton')
    regions = qkv.to(dtype).reshape(8, n_win, size // n_win, n_win, size // n_win, 3 * c).transpose(2, 3)
    regions = regions.reshape(8, n_win * n_win, -1, 3 * c)
    _assert_routing_valid(routing, regions[..., :c], regions[..., c:2 * c], c ** -0.5)
    outs = {'kernel': out_kernel}
    for name in ('torch', 'ref'):
        outs[name], _ = _bra_2d(leaves[name], heads, n_win, topk, c, None, routing=routing)
    grad_out = _grad_like(outs['ref'])
    g = {name: torch.autograd.grad(outs[name], leaves[name], grad_out.to(outs[name].dtype)) for name in outs}
    assert_kernel_close(outs['kernel'], outs['torch'], outs['ref'], f'out {stage}')
    for i, what in enumerate(('dqkv', 'dweight', 'dbias')):
        # the conv's weight/bias gradients sum over every pixel of 8 maps: float32 in the kernel, fp16/bf16 conv in
        # PyTorch; compare them relative to their size
        atol = None if i == 0 else 1e-3 * g['ref'][i].abs().max().item()
        assert_kernel_close(g['kernel'][i], g['torch'][i].to(g['kernel'][i].dtype), g['ref'][i], f'{what} {stage}',
                            atol=atol)


@pytest.mark.cuda
def test_bra_2d_fast_launch_matches_the_jit_cuda(monkeypatch):
    """From its second call a plan launches its kernels through their compiled handles: same results as the JIT."""
    from visionattn.ops.triton import block_sparse as tk
    from visionattn.ops.triton import launch
    torch.manual_seed(0)
    qkv = torch.randn(4, 28, 28, 3 * 128, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(128, 1, 5, 5, device='cuda', requires_grad=True)
    bias = torch.randn(128, device='cuda', requires_grad=True)
    results = []
    for fast in (False, True, True):
        monkeypatch.setattr(launch, 'FAST_LAUNCH', fast)  # the switch the shared launcher reads
        if not fast:
            monkeypatch.setattr(tk, '_PLANS', {})
        out = bi_level_routing_attention_2d(qkv, 4, 7, 4, 128, None, weight, bias, backend='triton')
        results.append([out, *torch.autograd.grad(out.float().square().sum(), (qkv, weight, bias))])
    handles = [slot[0] for plan in tk._PLANS.values()
               for slot in [*plan.slots.values(), *(s for d in plan.bwd_slots.values() for s in d.values())]]
    assert sum(handle is not None for handle in handles) == 5  # route, fwd, dq, dkv, LCE grad: this Triton's
    # launcher takes the compiled-handle path (else every launch re-binds its arguments through the JIT)
    for a, b in zip(results[0], results[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('backend', ['reference', 'triton'])
def test_bra_2d_batch_of_no_image_gives_empty_outputs(backend):
    # Issue 21: the op takes an empty batch (every caller then does): empty output and routing, gradients flow.
    qkv = torch.randn(0, 6, 6, 3 * 16).requires_grad_()
    weight, bias = torch.randn(16, 1, 3, 3), torch.randn(16)
    out, routing = bi_level_routing_attention_2d(qkv, 2, 3, 3, 16, None, weight, bias, backend=backend,
                                                 return_routing=True)
    assert out.shape == (0, 6, 6, 16) and routing.shape == (0, 9, 3) and routing.dtype == torch.long
    out.sum().backward()
    assert qkv.grad is not None and qkv.grad.shape == qkv.shape


def test_kernel_grids_are_one_flat_axis_for_large_batches():
    # Issue 24: CUDA caps grid axes 1 and 2 at 65535; batch * heads of a video MoBA call or of BRA at a large batch
    # outgrows it, so every attention kernel puts all its programs on axis 0 (the NA kernels' policy).
    from visionattn.ops.triton.block_sparse import _BraPlan, _SeqPlan
    q = torch.empty(4096, 32, 64, 16, device='meta')
    index = torch.empty(4096, 32, 4, 2, dtype=torch.int32, device='meta')
    seq = _SeqPlan(q, q, q, index, None, 16, 16, False)
    qkv = torch.empty(8192, 14, 14, 3 * 256, device='meta')
    bra = _BraPlan(qkv, None, None, None, None, 7, 8, 4, 256)
    for plan, per_image in ((seq, 4096 * 32), (bra, 8192 * 8)):
        for grid, tiles in ((plan.fwd_grid, plan.tiles.q_tiles[0]), (plan.dq_grid, plan.tiles.q_tiles[1]),
                            (plan.dkv_grid, plan.tiles.kv_tiles)):
            blocks = 4 if plan is seq else 49
            assert grid == (blocks * tiles * per_image, 1, 1)


@pytest.mark.cuda
def test_more_than_65535_batch_heads_cuda():
    # The flat grid decodes (batch, head) from the program index: the last images are right, forward and backward.
    (q, k, v), index, count = _problem(8193, 8, 2, 2, 16, 16, 1, 16, 16, dtype=torch.float16, device='cuda')
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = block_sparse_attention(*leaves, index, count, 16, 16, backend='triton')
    grad = _grad_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    tail = [t[-3:].detach().float().requires_grad_() for t in (q, k, v)]
    want_out = block_sparse_attention(*tail, index[-3:], count[-3:], 16, 16, backend='reference')
    want = torch.autograd.grad(want_out, tail, grad[-3:].float())
    torch.testing.assert_close(out[-3:].float(), want_out, rtol=2e-2, atol=2e-2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g[-3:].float(), w, rtol=2e-2, atol=2e-2)


def test_causal_reference_takes_an_empty_batch():
    # the causal mask's reshape used -1, ambiguous for a batch of 0 (adversarial probe, through MoBA)
    q = torch.randn(0, 2, 8, 4)
    index = torch.zeros(0, 2, 2, 1, dtype=torch.int32)
    out = block_sparse_attention(q, q, q, index, None, 4, 4, causal=True, backend='reference')
    assert out.shape == q.shape
