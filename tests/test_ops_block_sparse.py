"""Routed block-sparse attention and bi-level routing attention: reference vs oracles, kernels vs reference."""
import pytest
import torch
from op_testing import assert_kernel_close, grads, leaf_copies

from visionattn.ops import BackendUnavailableError, bi_level_routing_attention, block_sparse_attention, bra_routing
from visionattn.ops.reference_block_sparse import bi_level_routing_attention_ref, block_sparse_attention_ref

pytestmark = pytest.mark.ops

CUDA = torch.cuda.is_available()
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if not CUDA or torch.cuda.is_bf16_supported() else [])


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
    grad_out = torch.randn_like(out_ref)
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
    grad_out = torch.randn_like(results['ref'][0])
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


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('stage', [(49, 64, 2, 1), (49, 16, 4, 4), (49, 4, 8, 16), (64, 256, 2, 1), (64, 64, 4, 4)])
def test_bra_biformer_shapes_cuda(stage, dtype):
    """BiFormer-S BRA stages at 224 (7x7 regions of 8x8, 4x4, 2x2 tokens) and 512 (8x8 regions of 16x16, 8x8)."""
    regions, tokens, heads, topk = stage
    c = heads * 32
    torch.manual_seed(0)
    qkv = torch.randn(8, regions, tokens, 3 * c, device='cuda')
    q, k, v = qkv.split(c, dim=-1)
    routing = bra_routing(q.to(dtype), k.to(dtype), topk, c ** -0.5)
    leaves = {name: qkv.to(dt).requires_grad_(True) for name, dt in (('kernel', dtype), ('torch', dtype),
                                                                     ('ref', torch.float32))}
    outs, dqkv = {}, {}
    for name, leaf in leaves.items():
        q, k, v = leaf.split(c, dim=-1)
        if name == 'kernel':
            outs[name] = bi_level_routing_attention(q, k, v, heads, topk, backend='triton')
        else:
            outs[name] = bi_level_routing_attention_ref(q, k, v, heads, topk, c ** -0.5, routing_index=routing)
    grad_out = torch.randn_like(outs['ref'])
    for name, leaf in leaves.items():
        dqkv[name] = torch.autograd.grad(outs[name], leaf, grad_out.to(leaf.dtype))[0]
    assert_kernel_close(outs['kernel'], outs['torch'], outs['ref'], f'out {stage}')
    assert_kernel_close(dqkv['kernel'], dqkv['torch'], dqkv['ref'], f'dqkv {stage}')
