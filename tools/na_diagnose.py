"""Where the time of one neighborhood-attention call goes, on a CUDA GPU: kernels, launches and the Python host path.

    python tools/na_diagnose.py [--batch 64] [--out DIR]

For the NAT-Tiny stage shapes (bf16, d32, k7, with and without rpb) it prints, per case: the device time of each
kernel (torch.profiler, 10 fwd+bwd steps), the CUDA-graph time of fwd and fwd+bwd (kernels only), the eager wall time
with autograd (triton's do_bench) and the host CPU time of one fwd+bwd call (calls enqueued back to back, no sync);
then the CPU cost of a bare Triton launch of the forward kernel against a one-op torch call, the registers and spills
of every compiled NA kernel, and a cProfile of the Python host path (top functions by own time).
"""
import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visionattn.ops import neighborhood_attention  # noqa: E402
from visionattn.ops.triton import neighborhood as tri  # noqa: E402

STAGES = [(56, 2), (28, 4), (14, 8), (7, 16)]

# Candidate 2-D configs for --sweep: (query tile, key tile, num_warps, num_stages), one config for all three kernels
# per run; each kernel's device time is read separately, so the best config of each kernel can be picked on its own.
SWEEP = {
    'q4x16 k4x16 w4': ((1, 4, 16), (1, 4, 16), 4, 2),
    'q4x16 k4x16 w8': ((1, 4, 16), (1, 4, 16), 8, 2),
    'q8x8 k8x8 w4': ((1, 8, 8), (1, 8, 8), 4, 2),
    'q8x8 k8x8 w8': ((1, 8, 8), (1, 8, 8), 8, 2),
    'q8x8 k4x16 w4': ((1, 8, 8), (1, 4, 16), 4, 2),
    'q8x8 k4x16 w8': ((1, 8, 8), (1, 4, 16), 8, 2),
    'q8x8 k2x16 w4': ((1, 8, 8), (1, 2, 16), 4, 2),
    'q4x8 k8x8 w4': ((1, 4, 8), (1, 8, 8), 4, 2),
    'q8x16 k8x8 w8': ((1, 8, 16), (1, 8, 8), 8, 2),
    'q8x8 k8x16 w8': ((1, 8, 8), (1, 8, 16), 8, 2),
    'q8x8 k8x8 w4 s3': ((1, 8, 8), (1, 8, 8), 4, 3),
    'q16x8 k8x8 w8': ((1, 16, 8), (1, 8, 8), 8, 2),
}


# Smaller tiles, tried with rpb only (--sweep-small).
SMALL = {
    'q8x8 k1x16 w4': ((1, 8, 8), (1, 1, 16), 4, 2),
    'q4x8 k2x16 w4': ((1, 4, 8), (1, 2, 16), 4, 2),
    'q4x16 k2x16 w4': ((1, 4, 16), (1, 2, 16), 4, 2),
    'q4x8 k4x8 w4': ((1, 4, 8), (1, 4, 8), 4, 2),
    'q2x16 k8x8 w4': ((1, 2, 16), (1, 8, 8), 4, 2),
    'q8x8 k2x16 w2': ((1, 8, 8), (1, 2, 16), 2, 2),
}


def sweep(batch, configs=None, rpb_only=False):
    """Per NAT stage (with and without rpb) and kernel: device time of every SWEEP config, best first."""
    configs = configs or SWEEP
    names = {'_na_fwd_kernel': 'fwd', '_na_bwd_dq_kernel': 'dq', '_na_bwd_dkdv_kernel': 'dkdv'}
    best = {}
    for size, heads in STAGES:
        for with_rpb in (True,) if rpb_only else (False, True):
            case = f'{size}x{size} h{heads}' + (' rpb' if with_rpb else '')
            fwd, both = make_case(batch, size, heads, with_rpb)
            times = {kind: [] for kind in names.values()}
            other = []
            for label, cfg in configs.items():
                tri.TILE_OVERRIDE[2] = {'fwd': cfg, 'dq': cfg, 'dkdv': cfg}
                try:
                    kt = kernel_times(both, steps=5)
                except Exception as err:  # a config that does not compile (shared memory) is a row, not a crash
                    print(f'{case} {label}: {type(err).__name__}: {str(err)[:100]}', flush=True)
                    continue
                for name, ms in kt.items():
                    kind = names.get(name.split('(')[0].strip())
                    if kind:
                        times[kind].append((ms, label))
                    else:
                        other.append(ms)
            tri.TILE_OVERRIDE.clear()
            for kind, rows in times.items():
                rows.sort()
                best[(case, kind)] = rows[0]
                print(f'{case} {kind}: ' + ', '.join(f'{label} {ms:.3f}' for ms, label in rows[:5]), flush=True)
            total = sum(best[(case, kind)][0] for kind in names.values())
            print(f'{case}: best fwd {best[(case, "fwd")][0]:.3f} bwd '
                  f'{best[(case, "dq")][0] + best[(case, "dkdv")][0]:.3f} total {total:.3f} ms (+ other kernels '
                  f'{max(other, default=0) if other else 0:.3f})', flush=True)
    for kern in (tri._na_fwd_kernel, tri._na_bwd_dq_kernel, tri._na_bwd_dkdv_kernel):
        try:
            spills = [(c.n_spills, c.n_regs) for cache in kern.device_caches.values() for c in cache[0].values()]
            print(f'{kern.fn.__name__}: {len(spills)} variants, {sum(1 for s, _ in spills if s)} spill '
                  f'(max {max(s for s, _ in spills)})', flush=True)
        except Exception as err:
            print(f'{kern.fn.__name__}: no resource report ({err})')
    return best


def compare_rpb_modes(batch):
    """Per NAT stage with rpb: kernels and CUDA-graph time with the bias blocks (RPB_MODE 2, the default) against
    the in-kernel rpb gather (RPB_MODE 1, forced by BIAS_TABLE_LIMIT = 0), and without rpb, one after the other."""
    from triton.testing import do_bench_cudagraph
    limit = tri.BIAS_TABLE_LIMIT
    for size, heads in STAGES:
        for label, with_rpb, table_limit, dtype in (
                ('no rpb', False, limit, torch.float32), ('rpb gather', True, 0, torch.float32),
                ('rpb blocks', True, limit, torch.float32), ('rpb blocks bf16', True, limit, torch.bfloat16)):
            tri.BIAS_TABLE_LIMIT, tri.BIAS_TABLE_DTYPE = table_limit, dtype
            tri._PLANS.clear()
            fwd, both = make_case(batch, size, heads, with_rpb)
            g_fwd = do_bench_cudagraph(fwd, rep=30, return_mode='median')
            g_both = do_bench_cudagraph(both, rep=30, return_mode='median')
            kt = kernel_times(both)
            kts = ', '.join(f'{name[:24]} {ms:.3f}' for name, ms in list(kt.items())[:6])
            modes = sorted({plan.rpb_mode for plan in tri._PLANS.values()})
            print(f'B{batch} {size}x{size} h{heads} {label} (RPB_MODE {modes}): graph fwd {g_fwd:.3f} fwd+bwd '
                  f'{g_both:.3f} ms | {kts}', flush=True)
    tri.BIAS_TABLE_LIMIT, tri.BIAS_TABLE_DTYPE = limit, torch.float32
    tri._PLANS.clear()


def make_case(batch, size, heads, with_rpb, dim=32, kernel=7):
    gen = torch.Generator(device='cuda').manual_seed(0)
    q, k, v = (torch.randn(batch, size, size, heads, dim, device='cuda', dtype=torch.bfloat16, generator=gen)
               .requires_grad_() for _ in range(3))
    rpb = None
    if with_rpb:
        rpb = (0.02 * torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device='cuda', generator=gen)) \
            .to(torch.bfloat16).requires_grad_()
    leaves = [t for t in (q, k, v, rpb) if t is not None]
    grad = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            return neighborhood_attention(q, k, v, kernel, rpb=rpb, backend='triton')

    def both():
        return torch.autograd.grad(neighborhood_attention(q, k, v, kernel, rpb=rpb, backend='triton'), leaves, grad)
    return fwd, both


def kernel_times(fn, steps=10):
    from torch.profiler import ProfilerActivity, profile
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        dev = getattr(evt, 'device_time_total', None) or getattr(evt, 'cuda_time_total', 0)
        if dev > 0:
            out[evt.key] = dev / steps / 1000.0  # ms per step
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def host_us(fn, calls=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls
    torch.cuda.synchronize()
    return host * 1e6


def host_profile(fn, calls, rows):
    """Print a cProfile of ``calls`` calls of ``fn`` (after a warm-up), the top ``rows`` functions by own time."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats('tottime').print_stats(rows)
    print(buf.getvalue()[:6000], flush=True)
    return prof


class _Null(torch.autograd.Function):
    """The floor of an autograd op: one output allocation forward, one gradient allocation per input backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad), torch.empty_like(grad), torch.empty_like(grad)


def host_chain(batch, size=14, heads=8, chain=8):
    """Host CPU per op call when ``chain`` calls form one autograd graph with one backward, as inside a model.

    ``torch.autograd.grad`` on a single call pays the engine's fixed cost (thread hand-off, graph walk) once per op;
    a model pays it once per step. Rows: NA with and without rpb, dense SDPA (flash) on the same tokens, and a null
    autograd.Function (allocations only), each as forward-only (no grad), forward with grad, and forward+backward.
    """
    import torch.nn.functional as F
    gen = torch.Generator(device='cuda').manual_seed(0)
    rand = dict(device='cuda', dtype=torch.bfloat16, generator=gen)

    def leaves(shape, rpb):
        q = torch.randn(*shape, **rand).requires_grad_()
        ks = [torch.randn(*shape, **rand).requires_grad_() for _ in range(chain)]
        vs = [torch.randn(*shape, **rand).requires_grad_() for _ in range(chain)]
        rpbs = [(0.02 * torch.randn(heads, 13, 13, **rand)).requires_grad_() if rpb else None for _ in range(chain)]
        return q, ks, vs, rpbs

    na_shape = (batch, size, size, heads, 32)
    sdpa_shape = (batch, heads, size * size, 32)
    cases = {
        'NA rpb': (na_shape, True, lambda x, k, v, r: neighborhood_attention(x, k, v, 7, rpb=r, backend='triton')),
        'NA': (na_shape, False, lambda x, k, v, r: neighborhood_attention(x, k, v, 7, backend='triton')),
        'SDPA': (sdpa_shape, False, lambda x, k, v, r: F.scaled_dot_product_attention(x, k, v)),
        'null Function': (sdpa_shape, False, lambda x, k, v, r: _Null.apply(x, k, v)),
    }
    for label, (shape, rpb, op) in cases.items():
        q, ks, vs, rpbs = leaves(shape, rpb)
        params = [q, *ks, *vs, *[r for r in rpbs if r is not None]]
        grad = torch.randn_like(q)

        def forward():
            x = q
            for k, v, r in zip(ks, vs, rpbs):
                x = op(x, k, v, r)
            return x

        def no_grad():
            with torch.no_grad():
                forward()

        def both():
            torch.autograd.grad(forward(), params, grad)
        per = [host_us(fn, 30) / chain for fn in (no_grad, forward, both)]
        single = host_us(lambda: torch.autograd.grad(op(q, ks[0], vs[0], rpbs[0]), [q, ks[0], vs[0]], grad), 30)
        print(f'host per call, chain of {chain} (B{batch} {size}x{size} h{heads} d32): {label}: no-grad fwd '
              f'{per[0]:.0f} us, fwd with grad {per[1]:.0f} us, fwd+bwd {per[2]:.0f} us (one call with its own '
              f'autograd.grad: {single:.0f} us)', flush=True)
        if label == 'NA rpb':
            print(f'cProfile of 30 chains of {chain} NA rpb fwd+bwd calls:', flush=True)
            host_profile(both, 30, 25)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--out', default=None, help='folder for the cProfile dump')
    parser.add_argument('--skip-cprofile', action='store_true')
    parser.add_argument('--sweep', action='store_true', help='time the SWEEP configs per kernel instead')
    parser.add_argument('--sweep-small', action='store_true', help='time the SMALL configs with rpb instead')
    parser.add_argument('--host', action='store_true', help='host CPU per call inside a chain of calls instead')
    parser.add_argument('--rpb-modes', action='store_true', help='bias blocks against the in-kernel rpb gather')
    args = parser.parse_args()
    if args.rpb_modes:
        compare_rpb_modes(args.batch)
        return
    if args.host:
        host_chain(args.batch)
        return
    if args.sweep or args.sweep_small:
        sweep(args.batch, SMALL if args.sweep_small else SWEEP, rpb_only=args.sweep_small)
        return
    import triton
    from triton.testing import do_bench, do_bench_cudagraph
    print(f'# {torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}', flush=True)
    for size, heads in STAGES:
        for with_rpb in (False, True):
            case = f'B{args.batch} {size}x{size} h{heads} d32 k7' + (' rpb' if with_rpb else '')
            fwd, both = make_case(args.batch, size, heads, with_rpb)
            g_fwd = do_bench_cudagraph(fwd, rep=30, return_mode='median')
            g_both = do_bench_cudagraph(both, rep=30, return_mode='median')
            w_fwd = do_bench(fwd, warmup=10, rep=50, return_mode='median')
            w_both = do_bench(both, warmup=10, rep=50, return_mode='median')
            h_fwd, h_both = host_us(fwd), host_us(both)
            kt = kernel_times(both)
            kts = ', '.join(f'{name[:40]} {ms:.3f}' for name, ms in list(kt.items())[:8])
            print(f'{case}: graph fwd {g_fwd:.3f} fwd+bwd {g_both:.3f} ms | eager fwd {w_fwd:.3f} fwd+bwd {w_both:.3f} '
                  f'ms | host fwd {h_fwd:.0f} fwd+bwd {h_both:.0f} us\n    kernels/step: {kts}', flush=True)

    # A bare launch of the forward kernel against a one-op torch call (host CPU per call).
    q = torch.randn(args.batch, 14, 14, 8, 32, device='cuda', dtype=torch.bfloat16)
    plan = tri._plan(q, q, q, (7, 7), (1, 1), (1, 1), (False, False), False)
    out, lse, _ = tri._fwd(q, q, q, None, (7, 7), (1, 1), (1, 1), (False, False), 32 ** -0.5)
    consts, warps, stages = plan.launch['fwd']

    def bare():
        tri._na_fwd_kernel[plan.grid('fwd')](q, q, q, out, lse, lse, lse, lse, *plan.windows, *plan.fwd_ints, 0.1,
                                             **consts, num_warps=warps, num_stages=stages)

    def cached():
        tri._fwd(q, q, q, None, (7, 7), (1, 1), (1, 1), (False, False), 32 ** -0.5)
    x = torch.zeros(16, device='cuda')
    print(f'host per call: triton launch {host_us(bare, 200):.1f} us, cached launch + 2 allocs (_fwd) '
          f'{host_us(cached, 200):.1f} us, x.add_(1) {host_us(lambda: x.add_(1), 200):.1f} us, torch.empty '
          f'{host_us(lambda: torch.empty(16, device="cuda"), 200):.1f} us', flush=True)

    for kern in (tri._na_fwd_kernel, tri._na_bwd_dq_kernel, tri._na_bwd_dkdv_kernel):
        try:
            for cache in kern.device_caches.values():
                for key, compiled in cache[0].items():
                    meta = compiled.metadata
                    print(f'{kern.fn.__name__}: regs {compiled.n_regs} spills {compiled.n_spills} '
                          f'shared {getattr(meta, "shared", "?")} warps {getattr(meta, "num_warps", "?")}', flush=True)
        except Exception as err:  # the cache layout is Triton-internal
            print(f'{kern.fn.__name__}: no resource report ({type(err).__name__}: {err})')

    if not args.skip_cprofile:
        fwd, both = make_case(args.batch, 14, 8, True)
        prof = host_profile(both, 100, 30)
        if args.out:
            prof.dump_stats(str(Path(args.out) / 'na_host.prof'))


if __name__ == '__main__':
    main()
