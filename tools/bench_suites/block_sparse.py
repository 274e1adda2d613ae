"""Bi-level routing attention (BiFormer) at BiFormer-S's stage shapes: our Triton kernel, the gather reference
(what the official code computes), dense SDPA and compiled FlexAttention with a mask built from the routing.

    python tools/bench_ops.py --suite block_sparse --out docs/benchmarks/block_sparse_h200.md

Shapes: 224² classification (7x7 regions of 8x8, 4x4, 2x2 tokens; topk 1, 4, 16; stage 4 is global attention,
topk=-2, run here as one region routed to itself) at batch 64 and 128, and 512² segmentation (8x8 regions) at
batch 16. Every implementation includes the routing (region means + top-k) in its time; FlexAttention also builds
its BlockMask every call, since the routing changes with the data. TFLOP/s counts the useful BRA work only
(QK^T and PV over the routed tokens), also for dense SDPA, which computes more. The bandwidth floor counts one
read of q, k, v and one write of the output (forward), plus the backward's reads of q, k, v, out, dout and
writes of dq, dk, dv.
"""
import time
from typing import Callable, Dict, List, Tuple

import torch

from .common import Row, measure

SUITE = 'block_sparse'
# (name, regions, tokens per region, channels, heads, topk): BiFormer-S (Zhu et al., CVPR 2023, Table 1), head dim
# 32 in BRA
STAGES_224 = [('s1', 49, 64, 64, 2, 1), ('s2', 49, 16, 128, 4, 4), ('s3', 49, 4, 256, 8, 16),
              ('s4-global', 1, 49, 512, 8, 1)]  # stage 4: AttentionLePE, global MHSA with its default 8 heads
STAGES_512 = [('s1', 64, 256, 64, 2, 1), ('s2', 64, 64, 128, 4, 4), ('s3', 64, 16, 256, 8, 16),
              ('s4-global', 1, 256, 512, 8, 1)]  # dense-prediction config: n_win=8


def add_arguments(parser):
    group = parser.add_argument_group('block_sparse suite')
    group.add_argument('--bs-batches', type=int, nargs='+', default=[64, 128], help='batches at 224²')
    group.add_argument('--bs-seg-batch', type=int, default=16, help='batch at 512² (0 skips)')
    group.add_argument('--bs-impls', nargs='+', default=['triton', 'gather', 'sdpa', 'flex'])
    group.add_argument('--bs-dtype', default='bfloat16', choices=['bfloat16', 'float16', 'float32'])
    group.add_argument('--bs-flex-budget', type=float, default=60.0,
                       help='seconds of FlexAttention compilation allowed before its remaining cases are skipped')
    group.add_argument('--bs-sweep', action='store_true', help='also time kernel tile configurations')
    group.add_argument('--bs-deadline', type=float, default=0.0,
                       help='seconds after which no new case starts (0: none), so that the report is still written')
    group.add_argument('--bs-profile', action='store_true', help='print per-kernel device time of our fwd+bwd')


def _inputs(batch, regions, tokens, channels, dtype):
    qkv = torch.randn(batch, regions, tokens, 3 * channels, device='cuda', dtype=dtype)
    return [t.requires_grad_(True) for t in qkv.split(channels, dim=-1)]


def _flex_impl(batch, regions, tokens, heads, topk, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from visionattn.ops import bra_routing
    n = regions * tokens
    table = torch.zeros(batch, regions, regions, dtype=torch.bool, device='cuda')  # updated in place each call

    def mask_mod(b, h, q_idx, kv_idx):
        return table[b, q_idx // tokens, kv_idx // tokens]
    flex = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        routing = bra_routing(q, k, topk, scale)
        table.zero_()
        table.scatter_(2, routing, True)
        mask = create_block_mask(mask_mod, batch, None, n, n, device='cuda', _compile=True)
        heads_first = lambda x: x.reshape(batch, n, heads, -1).transpose(1, 2)  # noqa: E731
        out = flex(heads_first(q), heads_first(k), heads_first(v), block_mask=mask, scale=scale)
        return out.transpose(1, 2).reshape(batch, regions, tokens, -1)
    return run


def _sdpa_impl(batch, regions, tokens, heads, scale):
    import torch.nn.functional as F
    n = regions * tokens

    def run(q, k, v):
        heads_first = lambda x: x.reshape(batch, n, heads, -1).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), scale=scale)
        return out.transpose(1, 2).reshape(batch, regions, tokens, -1)
    return run


def _modes(fn: Callable, inputs: List[torch.Tensor]) -> Dict[str, Callable]:
    grad_out = torch.randn_like(inputs[2])

    def forward():
        with torch.no_grad():
            return fn(*inputs)

    def forward_backward():
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, grad_out)
    return {'fwd': forward, 'fwd+bwd': forward_backward}


def _graph_row(case, impl, mode, fn, flops, min_bytes, peak, bandwidth=4.3e12) -> Row:
    """Time ``fn`` replayed from a CUDA graph: the device time without Python and launch overhead."""
    from triton.testing import do_bench_cudagraph
    try:
        ms = float(do_bench_cudagraph(fn, rep=20, return_mode='median'))
    except Exception as error:  # report, do not abort the suite
        torch.cuda.synchronize()
        return Row(SUITE, case, impl, mode + ' graph', note=f'graph capture failed: {type(error).__name__}')
    return Row(SUITE, case, impl, mode + ' graph', ms=ms, tflops=flops / (ms * 1e-3) / 1e12, peak_gib=peak,
               bw_floor_pct=100.0 * (min_bytes / bandwidth) / (ms * 1e-3))


def _profile(case: str, fn: Callable) -> None:
    """Print the device time of each kernel in one call of ``fn`` (mean of 5), to see where the time goes."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    device_us = lambda e: getattr(e, 'self_device_time_total', getattr(e, 'self_cuda_time_total', 0.0))  # noqa: E731
    total = sum(device_us(e) for e in events) / 5
    print(f'[profile] {case}: device time per call {total:.1f} us', flush=True)
    for event in sorted(events, key=device_us, reverse=True)[:8]:
        print(f'[profile]   {device_us(event) / 5:8.1f} us  x{event.count // 5:<3d} {event.key[:90]}', flush=True)


def _sweep(case: str, q, k, v, heads, topk, scale) -> List[Row]:
    """Time tile configurations of the three kernels at one shape (for choosing the launch heuristics)."""
    from triton import next_power_of_2 as triton_next_pow2
    from triton.testing import do_bench

    from visionattn.ops import bra_routing
    from visionattn.ops.triton import block_sparse as tk
    from visionattn.ops.triton._common import TileConfig
    batch, regions, tokens, channels = q.shape
    hf = lambda x: x.detach().reshape(batch, regions * tokens, heads, -1).transpose(1, 2)  # noqa: E731
    qh, kh, vh = hf(q), hf(k), hf(v)
    index = bra_routing(q, k, topk, scale)[:, None].to(torch.int32).contiguous()
    out, lse = tk._fwd(qh, kh, vh, index, None, tokens, tokens, scale)
    dout = torch.randn_like(out)
    rows = []
    configs = [(None, None, w, st) for w in (2, 4, 8) for st in (1, 2, 3)]
    configs += [(bm, None, 4, 2) for bm in (16, 32, 64, 128)] + [(None, bn, 4, 2) for bn in (32, 64, 128)]
    configs += [(bm, bn, 8, 2) for bm in (64, 128) for bn in (64, 128)]
    deadline = time.perf_counter() + 20.0
    for block_m, block_n, warps, stages in configs:
        if time.perf_counter() > deadline:
            break
        cfg = TileConfig(block_m, block_n, warps, stages)
        note = f'BM={block_m} BN={block_n} w={warps} s={stages}'
        bench = lambda f: do_bench(f, warmup=5, rep=20, return_mode='median')  # noqa: E731
        if block_m is None or block_m <= max(16, triton_next_pow2(tokens)):
            rows.append(Row(SUITE, case, 'sweep-fwd', 'fwd', note=note,
                            ms=bench(lambda: tk._fwd(qh, kh, vh, index, None, tokens, tokens, scale, cfg))))
            rows.append(Row(SUITE, case, 'sweep-bwd(dq cfg)', 'bwd', note=note, ms=bench(
                lambda: tk._bwd(dout, qh, kh, vh, out, lse, index, None, tokens, tokens, scale, dq_config=cfg))))
        if block_n is None or block_n <= max(16, triton_next_pow2(tokens)):
            rows.append(Row(SUITE, case, 'sweep-bwd(dkv cfg)', 'bwd', note=note, ms=bench(
                lambda: tk._bwd(dout, qh, kh, vh, out, lse, index, None, tokens, tokens, scale, dkv_config=cfg))))
    best = {}
    for row in rows:
        if row.impl not in best or row.ms < best[row.impl].ms:
            best[row.impl] = row
    for row in best.values():
        print(f'[sweep] {case} {row.impl}: best {row.ms:.3f} ms with {row.note}', flush=True)
    return list(best.values())


def run(args) -> List[Row]:
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = 256
    if hasattr(torch._dynamo.config, 'recompile_limit'):
        torch._dynamo.config.recompile_limit = 256
    dtype = getattr(torch, args.bs_dtype)
    cases: List[Tuple[str, int, tuple]] = []
    batches = args.bs_batches[:1] if args.quick else args.bs_batches
    for batch in batches:
        cases += [(f'224 b{batch} {s[0]}', batch, s) for s in STAGES_224]
    if args.bs_seg_batch and not args.quick:
        cases += [(f'512 b{args.bs_seg_batch} {s[0]}', args.bs_seg_batch, s) for s in STAGES_512]
    rows: List[Row] = []
    started = time.perf_counter()
    # FlexAttention last: its first compilation alone took minutes on the H200 machine, so it must not keep the
    # other implementations from being measured
    passes = [[i for i in args.bs_impls if i != 'flex']] + ([['flex']] if 'flex' in args.bs_impls else [])
    flex_spent = 0.0
    for impl_names in passes:
        for case_name, batch, stage in cases:
            case = '{} R={} T={} C={} h={} topk={}'.format(case_name, *stage[1:])
            if args.bs_deadline and time.perf_counter() - started > args.bs_deadline:
                rows.append(Row(SUITE, case, '/'.join(impl_names), '-', note='skipped: --bs-deadline reached'))
                continue
            if impl_names == ['flex'] and flex_spent > args.bs_flex_budget:
                rows.append(Row(SUITE, case, 'flex', '-', note='skipped: --bs-flex-budget spent'))
                continue
            before = time.perf_counter()
            rows += _run_case(args, case, batch, stage, dtype, impl_names, profile=batch == batches[0])
            if impl_names == ['flex']:
                flex_spent += time.perf_counter() - before
            torch.cuda.empty_cache()
    return rows


def _run_case(args, case, batch, stage, dtype, impl_names, profile) -> List[Row]:
    from visionattn.ops import bi_level_routing_attention
    _, regions, tokens, channels, heads, topk = stage
    scale = channels ** -0.5  # the official quirk: the full qk dim
    inputs = _inputs(batch, regions, tokens, channels, dtype)
    n_tokens = batch * regions * tokens
    flops = 4 * n_tokens * topk * tokens * channels  # QK^T and PV over routed tokens, all heads
    io_bytes = n_tokens * channels * inputs[0].element_size()
    impls = {
        'triton': lambda q, k, v: bi_level_routing_attention(q, k, v, heads, topk, backend='triton'),
        'gather': lambda q, k, v: bi_level_routing_attention(q, k, v, heads, topk, backend='reference'),
        'sdpa': _sdpa_impl(batch, regions, tokens, heads, scale),
        'flex': _flex_impl(batch, regions, tokens, heads, topk, scale) if 'flex' in impl_names else None,
    }
    rows: List[Row] = []
    measured: Dict[Tuple[str, str], Row] = {}
    for impl in impl_names:
        for mode, fn in _modes(impls[impl], inputs).items():
            if impl == 'flex':  # compile outside the timing, and report a failure instead of aborting
                try:
                    fn()
                    torch.cuda.synchronize()
                except Exception as error:
                    rows.append(Row(SUITE, case, impl, mode, note=f'failed: {type(error).__name__}: '
                                                                   f'{str(error)[:80]}'))
                    continue
            backward = mode == 'fwd+bwd'
            work, floor = flops * (3.5 if backward else 1.0), io_bytes * (12 if backward else 4)
            row = measure(SUITE, case, impl, mode, fn, work, min_bytes=floor)
            measured[impl, mode] = row
            rows.append(row)
            print(f'{case} {impl} {mode}: {row.ms} ms, {row.peak_gib} GiB {row.note}', flush=True)
            if impl in ('triton', 'gather') and row.ms is not None:
                graphed = _graph_row(case, impl, mode, fn, work, floor, row.peak_gib)
                measured[impl, graphed.mode] = graphed
                rows.append(graphed)
                print(f'{case} {impl} {graphed.mode}: {graphed.ms} ms {graphed.note}', flush=True)
    for mode in ('fwd', 'fwd+bwd', 'fwd graph', 'fwd+bwd graph'):
        ours, ref = measured.get(('triton', mode)), measured.get(('gather', mode))
        if ours and ref and ours.ms and ref.ms:
            ours.note = f'{ref.ms / ours.ms:.2f}x faster, {ours.peak_gib / max(ref.peak_gib, 1e-9):.2f}x memory ' \
                        'vs gather'
            ours.extra.update(speedup_vs_gather=ref.ms / ours.ms,
                              memory_vs_gather=ours.peak_gib / max(ref.peak_gib, 1e-9))
    if 'triton' in impl_names and profile and regions > 1:
        if args.bs_profile:
            try:
                _profile(case, _modes(impls['triton'], inputs)['fwd+bwd'])
            except Exception as error:  # diagnostics only
                print(f'[profile] {case}: failed: {error!r}', flush=True)
        if args.bs_sweep:
            rows += _sweep(case, *inputs, heads, topk, scale)
    return rows
