"""MoBA / VMoBA: partitions, gating, selection rules against transcriptions of the official code, the dense masked
reference, and the block-sparse kernel (interpreter) against it, forward and backward."""
import pytest
import torch
import torch.nn.functional as F
from op_testing import assert_kernel_close, grads, leaf_copies

from visionattn.layers import MoBAAttention, VMoBAAttention
from visionattn.ops import block_sparse_attention, moba_attention, vmoba_attention
from visionattn.ops.moba import (
    block_gate,
    mask_to_block_index,
    partition_block_size,
    partition_tokens,
    select_blocks,
    unpartition_tokens,
    vmoba_attention_ref,
)

pytestmark = pytest.mark.ops

THW = (4, 8, 8)
CHUNKS = [1, 2, 0.5, (4, 4), (2, 8), (2, 4, 4), (1, 4, 8), (4, 2, 2)]


def _qkv(batch=1, heads=2, n=256, dim=32, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, n, dim, generator=gen, dtype=dtype) for _ in range(3)]


# ---------------------------------------------------------------------------------------------------------------
# partitions

@pytest.mark.parametrize('chunk', CHUNKS)
def test_unpartition_inverts_partition(chunk):
    x = torch.randn(2, 3, 256, 5)
    parted, block = partition_tokens(x, THW, chunk, dim=2)
    assert 256 % block == 0
    assert torch.equal(unpartition_tokens(parted, THW, chunk, dim=2), x)
    y = torch.randn(2, 256, 3, 5)  # VMoBA's own [B, N, heads, D] layout
    assert torch.equal(unpartition_tokens(partition_tokens(y, THW, chunk, dim=1)[0], THW, chunk, dim=1), y)


def test_partition_blocks_are_the_official_tiles_and_cubes():
    t, h, w = THW
    coords = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing='ij'), -1)
    coords = coords.reshape(1, t * h * w, 3)  # (t, h, w) of every token in row-major order
    cubes, block = partition_tokens(coords, THW, (2, 4, 4), dim=1)
    assert block == 32
    for i, cube in enumerate(cubes[0].split(block)):  # blocks ordered (nct, nch, ncw), tokens (ct, ch, cw) inside
        nct, nch, ncw = i // 4, (i // 2) % 2, i % 2
        expected = [(nct * 2 + a, nch * 4 + b, ncw * 4 + c) for a in range(2) for b in range(4) for c in range(4)]
        assert cube.tolist() == [list(e) for e in expected]
    tiles, block = partition_tokens(coords, THW, (4, 2), dim=1)
    assert block == t * 4 * 2
    first = tiles[0, :block]  # the spatial tile rows 0..3, columns 0..1 through all frames, frame-major
    expected = [(a, b, c) for a in range(t) for b in range(4) for c in range(2)]
    assert first.tolist() == [list(e) for e in expected]
    frames, block = partition_tokens(coords, THW, 1, dim=1)
    assert block == h * w and torch.equal(frames, coords)


def test_partition_bad_inputs():
    x = torch.randn(1, 2, 256, 4)
    with pytest.raises(ValueError, match='does not divide the 8x8 frame'):
        partition_tokens(x, THW, (3, 4))
    with pytest.raises(ValueError, match='does not divide the 4x8x8 video'):
        partition_tokens(x, THW, (3, 4, 4))
    with pytest.raises(ValueError, match='1-D chunk of 3 frames'):
        partition_tokens(x, THW, 3)
    with pytest.raises(ValueError, match='has 255 tokens'):
        partition_tokens(x[:, :, :255], THW, 1)
    with pytest.raises(ValueError, match='chunk must be'):
        partition_block_size(THW, (1, 2, 3, 4))
    with pytest.raises(ValueError, match='thw must be'):
        partition_block_size((4, 8), 1)


def test_partition_axis_out_of_range_is_refused():
    # Adversarial probe: dim was taken modulo x.dim(), so dim=5 of a 4-D tensor partitioned axis 1 without a word
    # when that axis had the token count
    x = torch.randn(2, 16, 8, 4)
    for dim in (4, 5, -5):
        for fn in (partition_tokens, unpartition_tokens):
            with pytest.raises(ValueError, match=rf'dim={dim} is not an axis of x, a 4-D tensor'):
                fn(x, (1, 4, 4), (2, 2), dim=dim)
    torch.testing.assert_close(partition_tokens(x, (1, 4, 4), (2, 2), dim=-3)[0],
                               partition_tokens(x, (1, 4, 4), (2, 2), dim=1)[0])


# ---------------------------------------------------------------------------------------------------------------
# gating and selection

def test_block_gate_is_the_mean_of_the_token_gates():
    q, k, _ = _qkv(n=64)
    gate = block_gate(q, k, 16)
    k_mean = k.reshape(1, 2, 4, 16, 32).mean(3)
    token_gate = q @ k_mean.transpose(-2, -1)  # MoBA's per-token gate q . mean(k)
    torch.testing.assert_close(gate.double(), token_gate.reshape(1, 2, 4, 16, 4).mean(3))
    assert gate.dtype == torch.float32


def _official_threshold(rows, self_rows, threshold, eps=1e-6):
    """VMoBA's threshold selection, transcribed entry by entry for rows of one group each (float64 lists)."""
    out = []
    for gate, is_self in zip(rows.tolist(), self_rows.tolist()):
        low, high = min(gate), max(gate)
        denom = high - low if high - low > eps else 1.0
        norm = [(g - low) / denom for g in gate]
        total = sum(norm)
        remain = max(threshold - sum(n for n, s in zip(norm, is_self) if s) / (total + eps), 0.0)
        others = sorted(((0.0 if s else n), j) for j, (n, s) in enumerate(zip(norm, is_self)))[::-1]
        keep, cum = set(), 0.0
        for n, j in others:
            keep.add(j)
            cum += n
            if cum / (total + eps) >= remain:
                break
        out.append([s or j in keep for j, s in enumerate(is_self)])
    return torch.tensor(out)


@pytest.mark.parametrize('threshold', [0.0, 0.25, 0.3, 0.6])
def test_threshold_query_head_matches_official_rule(threshold):
    gen = torch.Generator().manual_seed(1)
    gate = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    mask = select_blocks(gate, 'threshold', threshold=threshold, scope='query_head')
    eye = torch.eye(6, dtype=torch.bool).expand(2, 3, 6, 6)
    expected = _official_threshold(gate.reshape(-1, 6), eye.reshape(-1, 6), threshold).reshape(2, 3, 6, 6)
    assert torch.equal(mask, expected)
    assert mask.diagonal(dim1=-2, dim2=-1).all()
    assert (mask.sum(-1) >= 2).all()  # the official quirk: one other block even when the self block suffices


@pytest.mark.parametrize('threshold', [0.1, 0.25])
def test_threshold_head_global_matches_official_rule(threshold):
    gen = torch.Generator().manual_seed(2)
    gate = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    mask = select_blocks(gate, 'threshold', threshold=threshold, scope='head_global')
    eye = torch.eye(5, dtype=torch.bool).expand(2, 3, 5, 5)
    expected = _official_threshold(gate.reshape(6, 25), eye.reshape(6, 25), threshold).reshape(2, 3, 5, 5)
    assert torch.equal(mask, expected)
    # the global rule spends its budget unevenly across query blocks, unlike the per-row rule
    assert mask.sum(-1).float().std() > 0


def test_topk_density_and_self_block():
    gen = torch.Generator().manual_seed(3)
    gate = torch.randn(2, 3, 10, 10, generator=gen)
    mask = select_blocks(gate, 'topk', topk=3, scope='query_head')
    assert (mask.sum(-1) == 3).all() and mask.diagonal(dim1=-2, dim2=-1).all()
    ranked = gate.masked_fill(torch.eye(10, dtype=torch.bool), -torch.inf)
    best_other = ranked.topk(2, -1).indices  # the two best non-self blocks
    assert mask.gather(-1, best_other).all()
    mask = select_blocks(gate, 'topk', topk=3, scope='head_global')
    assert (mask.sum((-2, -1)) == 30).all() and mask.diagonal(dim1=-2, dim2=-1).all()
    mask = select_blocks(gate, 'topk', topk=2, scope='overall')
    assert (mask.sum((1, 2, 3)) == 2 * 3 * 10).all() and mask.diagonal(dim1=-2, dim2=-1).all()
    assert (select_blocks(gate, 'topk', topk=50).sum(-1) == 10).all()  # clamped to what exists


def test_moba_causal_selection():
    gen = torch.Generator().manual_seed(4)
    gate = torch.randn(1, 2, 6, 6, generator=gen)
    mask = select_blocks(gate, 'topk', topk=3, causal=True)
    assert not mask.triu(1).any() and mask.diagonal(dim1=-2, dim2=-1).all()
    assert mask.sum(-1).tolist() == [[[1, 2, 3, 3, 3, 3]] * 2]
    past = gate.masked_fill(torch.ones(6, 6, dtype=torch.bool).tril(-1).logical_not(), -torch.inf)
    assert mask[..., 5, :].eq(torch.zeros(1, 2, 6, dtype=torch.bool).scatter(-1, past[..., 5, :].topk(2).indices,
                                                                             True) | (torch.arange(6) == 5)).all()


def test_selection_bad_inputs():
    gate = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match='select_mode'):
        select_blocks(gate, 'random')
    with pytest.raises(ValueError, match='scope'):
        select_blocks(gate, scope='frame')
    with pytest.raises(ValueError, match='needs topk'):
        select_blocks(gate, 'topk')
    with pytest.raises(ValueError, match="scope='block' is only defined"):
        select_blocks(gate, 'topk', topk=2, scope='block')
    with pytest.raises(ValueError, match='threshold=1.5'):
        select_blocks(gate, threshold=1.5)
    with pytest.raises(ValueError, match='Q == C'):
        select_blocks(torch.randn(1, 1, 4, 3))
    q, k, v = _qkv(n=256)
    with pytest.raises(ValueError, match='expected q, k'):
        vmoba_attention(q, k[:, :, :128], v, THW, 1)
    with pytest.raises(ValueError, match='block_size=48'):
        moba_attention(q, k, v, 48, 2)


def test_mask_to_block_index_lists_the_selection():
    mask = torch.tensor([[[[True, False, True], [False, False, False], [False, True, True]]]])
    index, count = mask_to_block_index(mask)
    assert count.tolist() == [[[2, 0, 2]]]
    assert index[0, 0, 0, :2].tolist() == [0, 2] and index[0, 0, 2, :2].tolist() == [1, 2]
    trimmed, _ = mask_to_block_index(mask, trim=True)
    assert trimmed.shape == (1, 1, 3, 2) and torch.equal(trimmed, index[..., :2])


# ---------------------------------------------------------------------------------------------------------------
# attention: reference path, threshold 1.0, kernel

@pytest.mark.parametrize('scope', ['query_head', 'head_global', 'block', 'overall'])
@pytest.mark.parametrize('chunk', [1, (4, 4), (2, 4, 4)])
def test_threshold_one_is_full_attention(scope, chunk):
    q, k, v = _qkv()
    out, mask = vmoba_attention(q, k, v, THW, chunk, threshold=1.0, scope=scope, backend='reference',
                                return_mask=True)
    assert mask.all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


def test_self_blocks_only_falls_back_to_dense_attention():
    q, k, v = _qkv()  # the official quirk: no block besides the self blocks selected -> dense attention
    out, mask = vmoba_attention(q, k, v, THW, (2, 4, 4), 'topk', topk=1, backend='reference', return_mask=True)
    assert mask.all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize('select_mode, scope', [('threshold', 'query_head'), ('threshold', 'head_global'),
                                                ('topk', 'query_head'), ('topk', 'head_global')])
def test_vmoba_equals_dense_masked_reference(select_mode, scope):
    q, k, v = _qkv(batch=2, seed=5)
    chunk = (2, 4, 4)
    out, mask = vmoba_attention(q, k, v, THW, chunk, select_mode, topk=3, scope=scope, scale=0.2,
                                backend='reference', return_mask=True)
    assert not mask.all() and mask.diagonal(dim1=-2, dim2=-1).all()
    parted = [partition_tokens(t, THW, chunk, dim=2)[0] for t in (q, k, v)]
    expected = unpartition_tokens(vmoba_attention_ref(*parted, mask, 32, scale=0.2), THW, chunk, dim=2)
    torch.testing.assert_close(out, expected)


def _kernel_vs_reference(q, k, v, mask, block, causal, dtype):
    """Kernel (interpreter) and same-dtype dense reference against the float64 dense reference, out and grads."""
    index, count = mask_to_block_index(mask)
    results = {}
    for name, dt in (('kernel', dtype), ('torch', dtype), ('ref', torch.float64)):
        leaves = leaf_copies([q, k, v], dt)
        for t in leaves:
            t.requires_grad_(True)
        if name == 'kernel':
            out = block_sparse_attention(*leaves, index, count, block, block, backend='triton', causal=causal)
        else:
            out = vmoba_attention_ref(*leaves, mask, block, causal=causal)
        results[name] = (out, leaves)
    grad_out = torch.randn_like(results['ref'][0])
    g = {name: grads(out, leaves, grad_out.to(out.dtype)) for name, (out, leaves) in results.items()}
    assert_kernel_close(results['kernel'][0], results['torch'][0], results['ref'][0], f'out {dtype}')
    for i, name in enumerate('qkv'):
        assert_kernel_close(g['kernel'][i], g['torch'][i], g['ref'][i], f'd{name} {dtype}')


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('select_mode', ['threshold', 'topk'])
def test_vmoba_kernel_matches_reference(select_mode, dtype):
    q, k, v = _qkv(dtype=torch.float32, seed=6)
    chunk = (2, 4, 4)
    parted = [partition_tokens(t, THW, chunk, dim=2)[0] for t in (q, k, v)]
    mask = select_blocks(block_gate(parted[0], parted[1], 32), select_mode, topk=3, scope='head_global')
    _kernel_vs_reference(*parted, mask, 32, False, dtype)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_moba_kernel_matches_reference(dtype):
    q, k, v = _qkv(n=128, dtype=torch.float32, seed=7)
    _, mask = moba_attention(q, k, v, 32, 2, backend='reference', return_mask=True)
    _kernel_vs_reference(q, k, v, mask, 32, True, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('select_mode', ['threshold', 'topk'])
def test_vmoba_kernel_matches_reference_cuda(select_mode, dtype):
    thw, chunk = (8, 16, 32), (2, 4, 16)  # 4096 tokens in 32 cubes of 128, as the benchmark's partition
    q, k, v = (t.cuda() for t in _qkv(batch=2, heads=4, n=4096, dim=128, dtype=torch.float32, seed=11))
    parted = [partition_tokens(t, thw, chunk, dim=2)[0] for t in (q, k, v)]
    mask = select_blocks(block_gate(parted[0], parted[1], 128), select_mode, topk=6, scope='query_head')
    _kernel_vs_reference(*parted, mask, 128, False, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_moba_kernel_matches_reference_cuda(dtype):
    q, k, v = (t.cuda() for t in _qkv(batch=2, heads=4, n=2048, dim=64, dtype=torch.float32, seed=12))
    _, mask = moba_attention(q, k, v, 128, 4, backend='reference', return_mask=True)
    _kernel_vs_reference(q, k, v, mask, 128, True, dtype)


def test_moba_reference_is_causal_and_matches_dense():
    q, k, v = _qkv(n=128, seed=8)
    out, mask = moba_attention(q, k, v, 16, 3, backend='reference', return_mask=True)
    torch.testing.assert_close(out, vmoba_attention_ref(q, k, v, mask, 16, causal=True))
    q2 = q.clone()
    q2[:, :, 100:] += 1.0  # later queries change neither the earlier outputs nor their block choice
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 112:] = 0.0
    v2[:, :, 112:] = 5.0
    out2 = moba_attention(q2, k2, v2, 16, 3, backend='reference')
    torch.testing.assert_close(out2[:, :, :96], out[:, :, :96])
    full = moba_attention(q, k, v, 16, 8, backend='reference')  # every past block: plain causal attention
    torch.testing.assert_close(full, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_layers_cycle_partitions_and_call_the_ops():
    q, k, v = _qkv(dtype=torch.float32, seed=9)
    layers = [VMoBAAttention(i, chunk_1d=1, chunk_2d=(4, 4), chunk_3d=(2, 4, 4), backend='reference')
              for i in range(4)]
    assert [layer.chunk for layer in layers] == [1, (4, 4), (2, 4, 4), 1]
    for layer in layers[:3]:
        expected = vmoba_attention(q, k, v, THW, layer.chunk, 'threshold', None, 0.25, 'head_global',
                                   backend='reference')
        torch.testing.assert_close(layer(q, k, v, THW), expected)
    moba = MoBAAttention(block_size=32, topk=2, backend='reference')
    torch.testing.assert_close(moba(q, k, v), moba_attention(q, k, v, 32, 2, backend='reference'))
    with pytest.raises(ValueError, match='needs topk'):
        VMoBAAttention(select_mode='topk')
    # refused when built, not at the first forward (adversarial probe; a 3-entry chunk_2d ran a 3-D partition)
    for kwargs, match in ((dict(chunk_2d=(2, 2, 2)), 'chunk_2d must be'), (dict(select_mode='top'), 'select_mode'),
                          (dict(scope='global'), 'scope')):
        with pytest.raises(ValueError, match=match):
            VMoBAAttention(1, **kwargs)


def test_vmoba_layer_is_a_dit_attention_core():
    # Adversarial probe: the README's pluggable core failed, the block passing grid_size= where the layer took thw.
    from visionattn.heads.diffusion import dit
    torch.manual_seed(0)
    model = dit.dit_video_tiny(depth=3, attention_core=lambda i: VMoBAAttention(i, chunk_2d=(2, 2),
                                                                                  chunk_3d=(2, 2, 2),
                                                                                  backend='reference')).eval()
    x = torch.randn(1, 4, 4, 8, 8)
    with torch.no_grad():
        out = model(x, torch.tensor([5]), torch.tensor([1]))
    assert out.shape == (1, 8, 4, 8, 8) and torch.isfinite(out).all()
    q, k, v = _qkv(dtype=torch.float32, seed=3)
    layer = VMoBAAttention(1, backend='reference')
    torch.testing.assert_close(layer(q, k, v, grid_size=THW), layer(q, k, v, THW))


@pytest.mark.parametrize('shape', [(0, 2), (1, 0)])
def test_vmoba_without_video_or_heads(shape):
    # was a reshape error inside the selection
    q = torch.randn(*shape, 4 * 8 * 8, 4)
    out, mask = vmoba_attention(q, q, q, (4, 8, 8), (2, 4, 4), backend='reference', return_mask=True)
    assert out.shape == q.shape and mask.shape == (*shape, 8, 8)


@pytest.mark.tools
def test_benchmark_suite_runs_tiny_on_cpu():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
    from bench_suites import vmoba as suite
    rows = suite.run(suite.quick_args(vm_densities=[0.5]))
    impls = {(row.impl, row.mode) for row in rows}
    assert impls == {(i, m) for i in ('ours', 'ours-kernel', 'sdpa') for m in ('fwd', 'fwd+bwd')}
    assert len(rows) == 12 and all(row.ms and row.ms > 0 for row in rows)  # top-k 4/8 and the threshold case
    assert 'top-4/8 density=0.500' in rows[0].case and 'vs SDPA' in rows[0].note


@pytest.mark.tools
@pytest.mark.parametrize('with_gating', [True, False])
def test_benchmark_flex_mask_is_the_same_selection(monkeypatch, with_gating):
    """The suite's FlexAttention peer attends exactly the selected blocks (checked eagerly on the CPU)."""
    import sys
    import warnings
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
    from bench_suites import vmoba as suite
    monkeypatch.setattr(torch, 'compile', lambda fn, **kwargs: fn)
    q, k, v = _qkv(dtype=torch.float32, seed=10)
    rule = dict(select_mode='threshold', threshold=0.25, scope='head_global')
    flex = suite._flex(THW, (2, 4, 4), 32, lambda gate: select_blocks(gate, **rule), 32 ** -0.5, with_gating)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = flex(q, k, v)
    torch.testing.assert_close(out, vmoba_attention(q, k, v, THW, (2, 4, 4), **rule, backend='reference'))


@pytest.mark.parametrize('backend', ['reference', 'triton'])
def test_moba_without_batch_or_heads(backend):
    """Batch 0 or no head: empty output and mask of the right shapes (was a reshape error on both backends; the
    causal reference also failed there with an empty batch)."""
    if backend == 'triton':
        from op_testing import kernel_device
        kernel_device()
    for shape in ((0, 2, 8, 4), (1, 0, 8, 4)):
        q = torch.randn(shape)
        out, mask = moba_attention(q, q, q, 4, 1, backend=backend, return_mask=True)
        assert out.shape == shape and mask.shape == (*shape[:2], 2, 2) and mask.dtype == torch.bool


def test_numpy_sizes_are_ints_and_non_finite_chunks_are_named():
    """Adversarial probe: NumPy integers for the grid and block size (a grid read from an array) were refused with
    a message that printed them as the valid ints they are; a NaN or infinite 1-D chunk failed inside int() with
    Python's conversion error."""
    np = pytest.importorskip('numpy')
    q, k, v = _qkv(dtype=torch.float32, n=64, dim=4)
    thw = (1, 8, 8)
    expected = vmoba_attention(q, k, v, thw, (4, 4), backend='reference')
    grid = tuple(np.array(thw))
    torch.testing.assert_close(vmoba_attention(q, k, v, grid, (4, 4), backend='reference'), expected)
    torch.testing.assert_close(vmoba_attention(q, k, v, thw, tuple(np.array((4, 4))), backend='reference'), expected)
    torch.testing.assert_close(moba_attention(q, k, v, np.int64(16), np.int64(2), backend='reference'),
                               moba_attention(q, k, v, 16, 2, backend='reference'))
    for chunk in (float('nan'), float('inf'), -float('inf')):
        with pytest.raises(ValueError, match='1-D chunk'):
            partition_block_size(thw, chunk)
    with pytest.raises(ValueError, match='thw must be'):
        partition_block_size((1, 8, 8.0), 1)  # a float side stays refused


def test_layers_refuse_bad_sizes_when_built():
    """Adversarial probe: MoBAAttention took block_size=8.5 (and a string failed in '<'), VMoBAAttention took topk=0,
    threshold=2, a zero or infinite 1-D chunk and zero tile sides; each failed only at the first forward."""
    for kwargs in (dict(block_size=8.5), dict(block_size='8'), dict(topk=0), dict(topk=2.0), dict(block_size=True)):
        with pytest.raises(ValueError, match='block_size and topk must be positive ints'):
            MoBAAttention(**kwargs)
    for kwargs, match in ((dict(select_mode='topk', topk=0), 'topk'), (dict(select_mode='topk', topk=1.5), 'topk'),
                          (dict(threshold=2.0), 'threshold'), (dict(threshold=float('nan')), 'threshold'),
                          (dict(chunk_1d=0), 'chunk_1d'), (dict(chunk_1d=float('inf')), 'chunk_1d'),
                          (dict(chunk_2d=(0, 4)), 'chunk_2d'), (dict(chunk_3d=(2, -4, 4)), 'chunk_3d')):
        with pytest.raises(ValueError, match=match):
            VMoBAAttention(0, **kwargs)
    np = pytest.importorskip('numpy')
    assert MoBAAttention(np.int64(4), np.int64(2)).block_size == 4
