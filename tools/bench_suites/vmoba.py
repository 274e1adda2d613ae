"""VMoBA attention at video-DiT sizes: our whole layer call (partition, block gating, selection, routed Triton
kernel, un-partition), the kernel alone on the same routing, dense SDPA (FlashAttention backend) and compiled
FlexAttention with the same block mask (with and without the gating around it).

    python tools/bench_ops.py --suite vmoba --out docs/benchmarks/vmoba_h200.md

Sizes: latents of a Wan-style VAE (4x temporal, 8x spatial) patchified 1x2x2, as in VMoBA's 93x576x1024 case:
(93 - 1) / 4 + 1 = 24 frames of 576/16 x 1024/16 = 36 x 64 tokens = 55,296 tokens; 61x512x1024 -> 16 x 32 x 64 =
32,768; 61x512x512 -> 16 x 32 x 32 = 16,384. Heads 12 x 128 (Wan 2.1 1.3B, the model of VMoBA's FLOPs script
``src/cal_theo_flops.py``), batch 1, bf16. Partition: 3-D cubes of 2 x 4 x 16 = 128 tokens (432 blocks at 55K).
Selection: top-k per query block at densities 10/20/30% (k = density x blocks, the self block included), and
VMoBA's threshold rule (0.25, head_global scope), whose density is reported. TFLOP/s counts the attended
(query, key) pairs only: 4 * pairs * head_dim forward, x3.5 for forward+backward; dense SDPA counts all pairs.

``--vm-quick`` runs a tiny case on the CPU with the PyTorch reference (for the tests; times mean nothing there).
"""
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import torch

from .common import Row, measure

SUITE = 'vmoba'
# name, (T, H, W)
SIZES = [('16K 61x512x512', (16, 32, 32)), ('33K 61x512x1024', (16, 32, 64)), ('55K 93x576x1024', (24, 36, 64))]
QUICK_SIZE = ('quick 4x8x8', (4, 8, 8))


def add_arguments(parser):
    group = parser.add_argument_group('vmoba suite')
    group.add_argument('--vm-sizes', nargs='+', default=['16K', '33K', '55K'], help='size name prefixes to run')
    group.add_argument('--vm-densities', type=float, nargs='+', default=[0.1, 0.2, 0.3])
    group.add_argument('--vm-threshold', type=float, default=0.25, help='threshold case (0 skips it)')
    group.add_argument('--vm-heads', type=int, default=12)
    group.add_argument('--vm-head-dim', type=int, default=128)
    group.add_argument('--vm-chunk', type=int, nargs=3, default=[2, 4, 16], help='3-D partition cube (ct, ch, cw)')
    group.add_argument('--vm-impls', nargs='+', default=['ours', 'ours-kernel', 'sdpa', 'flex', 'flex-kernel'])
    group.add_argument('--vm-flex-budget', type=float, default=120.0,
                       help='seconds of FlexAttention runs (compilation included) before its remaining cases skip')
    group.add_argument('--vm-quick', action='store_true', help='tiny CPU run with the reference backend (tests)')
    group.add_argument('--vm-sweep', action='store_true',
                       help='also time kernel tile configurations at the first density of each size (GPU)')


def _timed(case: str, impl: str, mode: str, fn: Callable, flops: float, cuda: bool) -> Row:
    if cuda:
        return measure(SUITE, case, impl, mode, fn, flops)
    fn()
    start = time.perf_counter()
    fn()
    ms = (time.perf_counter() - start) * 1e3
    return Row(SUITE, case, impl, mode, ms=ms, tflops=flops / (ms * 1e-3) / 1e12, note='CPU reference')


def _modes(fn: Callable, inputs: List[torch.Tensor]) -> Dict[str, Callable]:
    grad_out = torch.randn_like(inputs[2])

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    def forward_backward():
        return torch.autograd.grad(fn(*inputs), inputs, grad_out)
    return {'fwd': forward, 'fwd+bwd': forward_backward}


def _flex(thw, chunk, block, select, scale, with_gating: bool):
    """Compiled FlexAttention on the same block mask; with_gating: the selection is made inside each call.

    The selected blocks are passed as *full* blocks (no mask_mod evaluated inside them, FlexAttention's fastest
    path); the mask_mod that reads the block selection only matters to eager FlexAttention, which ignores the
    block sparsity and applies mask_mod to every score.
    """
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    from visionattn.ops.moba import block_gate, mask_to_block_index, partition_tokens, unpartition_tokens
    flex = torch.compile(flex_attention, dynamic=False)
    table = {}  # the block selection, updated in place so that the compiled mask_mod stays the same

    def mask_mod(b, h, q_idx, kv_idx):
        return table['mask'][b, h, q_idx // block, kv_idx // block]

    def block_mask(q_p, k_p):
        selection = select(block_gate(q_p, k_p, block))
        if 'mask' not in table:
            table['mask'] = selection.clone()
        table['mask'].copy_(selection)
        index, count = mask_to_block_index(selection)
        return BlockMask.from_kv_blocks(torch.zeros_like(count), index, count, index, BLOCK_SIZE=block,
                                        mask_mod=mask_mod)
    fixed = {}

    def run(q, k, v):
        q_p, k_p, v_p = (partition_tokens(t, thw, chunk, dim=2)[0] for t in (q, k, v))
        if with_gating:
            mask = block_mask(q_p, k_p)
        else:  # routing fixed once, outside the timing
            if 'mask' not in fixed:
                fixed['mask'] = block_mask(q_p.detach(), k_p.detach())
            mask = fixed['mask']
        return unpartition_tokens(flex(q_p, k_p, v_p, block_mask=mask, scale=scale), thw, chunk, dim=2)
    return run


def _cases(args):
    sizes = [QUICK_SIZE] if args.vm_quick else [s for s in SIZES if any(s[0].startswith(p) for p in args.vm_sizes)]
    densities = args.vm_densities[:1] if args.quick else args.vm_densities
    if args.quick and not args.vm_quick:
        sizes = sizes[:1]
    rules = [('topk', d) for d in densities] + ([('threshold', args.vm_threshold)] if args.vm_threshold else [])
    return [(name, thw, mode, value) for name, thw in sizes for mode, value in rules]


def run(args) -> List[Row]:
    from visionattn.ops import block_sparse_attention, vmoba_attention
    from visionattn.ops.moba import block_gate, mask_to_block_index, partition_tokens, select_blocks
    cuda = torch.cuda.is_available() and not args.vm_quick
    device, dtype = ('cuda', torch.bfloat16) if cuda else ('cpu', torch.float32)
    backend = 'triton' if cuda else 'reference'
    heads, head_dim = (2, 32) if args.vm_quick else (args.vm_heads, args.vm_head_dim)
    chunk = (2, 4, 4) if args.vm_quick else tuple(args.vm_chunk)
    if cuda:
        import torch._dynamo as dynamo
        dynamo.config.cache_size_limit = 256
    impls = [i for i in args.vm_impls if cuda or i not in ('flex', 'flex-kernel')]
    rows: List[Row] = []
    flex_spent = 0.0
    for size_name, thw, select_mode, value in _cases(args):
        n = thw[0] * thw[1] * thw[2]
        gen = torch.Generator(device=device).manual_seed(0)
        inputs = [torch.randn(1, heads, n, head_dim, device=device, dtype=dtype, generator=gen).requires_grad_(True)
                  for _ in range(3)]
        scale = head_dim ** -0.5
        q_p, block = partition_tokens(inputs[0].detach(), thw, chunk, dim=2)
        k_p = partition_tokens(inputs[1].detach(), thw, chunk, dim=2)[0]
        n_blocks = n // block
        if select_mode == 'topk':
            topk = max(1, round(value * n_blocks))
            select_kw = dict(select_mode='topk', topk=topk, scope='query_head')
            rule = f'top-{topk}/{n_blocks}'
        else:
            select_kw = dict(select_mode='threshold', threshold=value, scope='head_global')
            rule = f'threshold {value} head_global'
        mask = select_blocks(block_gate(q_p, k_p, block), **select_kw)
        density = mask.float().mean().item()
        pairs = float(mask.sum().item()) * block * block  # attended (query, key) pairs, all heads
        case = f'{size_name} N={n} h={heads}x{head_dim} cube={"x".join(map(str, chunk))} {rule} ' \
               f'density={density:.3f}'
        index, count = mask_to_block_index(mask, trim=True)
        v_p = partition_tokens(inputs[2].detach(), thw, chunk, dim=2)[0]
        routed = [t.clone().requires_grad_(True) for t in (q_p, k_p, v_p)]
        select = lambda gate: select_blocks(gate, **select_kw)  # noqa: E731
        fns: Dict[str, Optional[Callable]] = {
            'ours': lambda q, k, v: vmoba_attention(q, k, v, thw, chunk, **select_kw, scale=scale, backend=backend),
            'ours-kernel': lambda q, k, v: block_sparse_attention(q, k, v, index, count, block, block, scale=scale,
                                                                  backend=backend),
            'sdpa': _sdpa(cuda, scale),
            'flex': _flex(thw, chunk, block, select, scale, True) if 'flex' in impls else None,
            'flex-kernel': _flex(thw, chunk, block, select, scale, False) if 'flex-kernel' in impls else None,
        }
        measured: Dict[tuple, Row] = {}
        for impl in impls:
            is_flex = impl.startswith('flex')
            if is_flex and flex_spent > args.vm_flex_budget:
                rows.append(Row(SUITE, case, impl, '-', note='skipped: --vm-flex-budget spent'))
                continue
            started = time.perf_counter()
            impl_inputs = routed if impl == 'ours-kernel' else inputs
            for mode, fn in _modes(fns[impl], impl_inputs).items():
                work = (n * n * heads if impl == 'sdpa' else pairs) * 4 * head_dim * (3.5 if mode == 'fwd+bwd' else 1)
                try:
                    if is_flex:  # compile outside the timing
                        fn()
                        torch.cuda.synchronize()
                    row = _timed(case, impl, mode, fn, work, cuda)
                except Exception as error:  # report, do not abort the suite
                    row = Row(SUITE, case, impl, mode, note=f'failed: {type(error).__name__}: {str(error)[:80]}')
                measured[impl, mode] = row
                rows.append(row)
                print(f'{case} {impl} {mode}: {row.ms} ms, {row.peak_gib} GiB {row.note}', flush=True)
            if is_flex:
                flex_spent += time.perf_counter() - started
        _compare(measured, density)
        if cuda and args.vm_sweep and (select_mode, value) == _cases(args)[0][2:]:
            rows += _sweep(case, routed, index, count, block, scale)
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _sdpa(cuda: bool, scale: float) -> Callable:
    import torch.nn.functional as F

    def run(q, k, v):
        if not cuda:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return run


def _compare(measured: Dict[tuple, Row], density: float) -> None:
    """Speed-up and memory against dense SDPA, with the target 0.7 / density, in each row's note and extras."""
    for mode in ('fwd', 'fwd+bwd'):
        dense = measured.get(('sdpa', mode))
        if not dense or not dense.ms:
            continue
        for (impl, row_mode), row in measured.items():
            if row_mode != mode or impl == 'sdpa' or not row.ms:
                continue
            speedup = dense.ms / row.ms
            row.extra.update(speedup_vs_sdpa=speedup, target_speedup=0.7 / density)
            note = f'{speedup:.2f}x vs SDPA (target {0.7 / density:.2f}x)'
            if row.peak_gib is not None and dense.peak_gib:
                row.extra['memory_vs_sdpa'] = row.peak_gib / dense.peak_gib
                note += f', {row.peak_gib / dense.peak_gib:.2f}x memory'
            row.note = (row.note + '; ' if row.note else '') + note


def quick_args(**overrides) -> SimpleNamespace:
    """The suite's defaults with ``--vm-quick`` (for tests that call ``run`` without the command line)."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--quick', action='store_true')
    add_arguments(parser)
    args = parser.parse_args(['--vm-quick'])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def _sweep(case: str, routed: List[torch.Tensor], index, count, block: int, scale: float) -> List[Row]:
    """Time tile configurations of the forward and both backward kernels on one routing (the defaults were tuned
    on BiFormer's small regions); prints and returns the best of each."""
    from triton.testing import do_bench

    from visionattn.ops.block_sparse import dedup_block_index
    from visionattn.ops.triton import block_sparse as tk
    from visionattn.ops.triton._common import TileConfig
    q, k, v = (t.detach() for t in routed)
    index, count = dedup_block_index(index, count)
    out, lse = tk._fwd(q, k, v, index, count, block, block, scale)
    dout = torch.randn_like(out)
    configs = [(None, None, None, None)] + [(bm, bn, w, st) for bm, bn in ((64, 64), (128, 64), (128, 32), (64, 128),
                                                                         (128, 128))
                                            for w in (4, 8) for st in (2, 3)]
    rows = []
    deadline = time.perf_counter() + 60.0
    for block_m, block_n, warps, stages in configs:
        if time.perf_counter() > deadline:
            break
        cfg = TileConfig(block_m, block_n, warps, stages)
        note = f'BM={block_m} BN={block_n} w={warps} s={stages}'
        bench = lambda f: do_bench(f, warmup=5, rep=20, return_mode='median')  # noqa: E731
        try:
            rows.append(Row(SUITE, case, 'sweep-fwd', 'fwd', note=note,
                            ms=bench(lambda: tk._fwd(q, k, v, index, count, block, block, scale, cfg))))
            rows.append(Row(SUITE, case, 'sweep-bwd(dq cfg)', 'bwd', note=note, ms=bench(
                lambda: tk._bwd(dout, q, k, v, out, lse, index, count, block, block, scale, dq_config=cfg))))
            rows.append(Row(SUITE, case, 'sweep-bwd(dkv cfg)', 'bwd', note=note, ms=bench(
                lambda: tk._bwd(dout, q, k, v, out, lse, index, count, block, block, scale, dkv_config=cfg))))
        except Exception as error:  # e.g. out of shared memory for a large tile
            print(f'[sweep] {case} {note}: failed: {type(error).__name__}', flush=True)
    best = {}
    for row in rows:
        if row.impl not in best or row.ms < best[row.impl].ms:
            best[row.impl] = row
    for row in best.values():
        print(f'[sweep] {case} {row.impl}: best {row.ms:.3f} ms with {row.note}', flush=True)
    return list(best.values())
