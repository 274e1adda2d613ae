"""Neighborhood attention (NA) on the GPU: our Triton kernel against dense SDPA and compiled FlexAttention.

FLOP convention: the op's useful work, 4 * B * heads * N * k^2 * head_dim FLOPs forward (QK^T and AV over each
query's k^2 neighbours, 2 FLOPs per multiply-add) and 3.5x that forward+backward (the backward recomputes QK^T and
does four more products of the same size, FlashAttention's convention). Dense SDPA rows use the dense FLOPs
(N^2 instead of N * k^2), so their TFLOP/s are comparable with ours as "rate of useful work" only in our rows; the
speed comparison is by time. FlexAttention gets the NA FLOPs (it skips masked blocks). bw floor: the bytes of q, k,
v, o (+ dO, dq, dk, dv for fwd+bwd) at 4.3 TB/s, as a share of the measured time.
"""
import sys
import time
from pathlib import Path

import torch

from .common import Row, measure

SUITE = 'na'
# NAT stage shapes (nat_tiny at 224: dims 64..512, heads 2,4,8,16, head dim 32), batch 64.
NAT_STAGES = [(56, 2), (28, 4), (14, 8), (7, 16)]


def add_arguments(parser):
    parser.add_argument('--na-batch', type=int, default=64, help='NA suite: batch of the NAT stage shapes')
    parser.add_argument('--na-sweep', action='store_true',
                        help='NA suite: instead of the comparison, time kernel configs (CUDA graphs) and profile')
    parser.add_argument('--na-profile', action='store_true',
                        help='NA suite: also print a profile (device and host time per op) of one fwd+bwd step')
    parser.add_argument('--na-deadline', type=float, default=0.0,
                        help='NA suite: seconds after which no new case starts (0: none), so the report is written')


def _import_op():
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from visionattn.ops import neighborhood_attention
    return neighborhood_attention


def _flex_fns(height, width, kernel, rpb):
    """Compiled FlexAttention with NATTEN's clamped 2-D window as mask_mod (+ rpb as score_mod)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    half = kernel // 2

    def start(coord, length):
        return torch.clamp(coord - half, 0, length - kernel)

    def mask_mod(b, h, q_idx, kv_idx):
        qi, qj = q_idx // width, q_idx % width
        ki, kj = kv_idx // width, kv_idx % width
        si, sj = start(qi, height), start(qj, width)
        return (ki >= si) & (ki < si + kernel) & (kj >= sj) & (kj < sj + kernel)

    score_mod = None
    if rpb is not None:
        def score_mod(score, b, h, q_idx, kv_idx):
            qi, qj = q_idx // width, q_idx % width
            ki, kj = kv_idx // width, kv_idx % width
            return score + rpb[h, ki - qi + kernel - 1, kj - qj + kernel - 1].to(score.dtype)

    n = height * width
    block_mask = create_block_mask(mask_mod, None, None, n, n, device='cuda', _compile=True)
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v):
        return compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)
    return run


def _case_rows(case, batch, height, width, heads, dim, kernel, with_rpb, impls):
    na = _import_op()
    dtype = torch.bfloat16
    n = height * width
    gen = torch.Generator(device='cuda').manual_seed(0)
    # Our layout is NATTEN's heads-last [B, H, W, heads, d]; SDPA/Flex take [B, heads, N, d].
    q, k, v = (torch.randn(batch, height, width, heads, dim, device='cuda', dtype=dtype, generator=gen)
               for _ in range(3))
    rpb = (0.02 * torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device='cuda', generator=gen)).to(dtype) \
        if with_rpb else None
    grad = torch.randn(batch, height, width, heads, dim, device='cuda', dtype=dtype, generator=gen)
    flops = 4.0 * batch * heads * n * kernel ** 2 * dim
    dense_flops = 4.0 * batch * heads * n * n * dim
    elem = batch * n * heads * dim * 2
    rows = []

    def add(impl, fwd, inputs, f_flops, out_grad, note=''):
        for mode in ('fwd', 'fwd+bwd'):
            if mode == 'fwd':
                def fn():
                    with torch.no_grad():
                        return fwd()
                factor, nbytes = 1.0, 4 * elem
            else:
                leaves = [t for t in inputs if t is not None]

                def fn():
                    out = fwd()
                    return torch.autograd.grad(out, leaves, out_grad)
                factor, nbytes = 3.5, 8 * elem
            try:
                row = measure(SUITE, case, impl, mode, fn, f_flops * factor, min_bytes=nbytes)
                if impl == 'visionattn-triton' and row.ms is not None:
                    # Kernel time without the host: the same call replayed from a CUDA graph.
                    from triton.testing import do_bench_cudagraph
                    graph_ms = do_bench_cudagraph(fn, rep=30, return_mode='median')
                    row.extra['graph_ms'] = graph_ms
                    row.note = f'CUDA graph {graph_ms:.3f} ms'
            except Exception as err:  # a peer that fails to compile or run is a row, not a crash
                row = Row(SUITE, case, impl, mode, note=f'{type(err).__name__}: {str(err)[:80]}')
            row.note = (row.note + ' ' + note).strip()
            rows.append(row)
            print(row, flush=True)

    if 'ours' in impls:
        leaves = [t.requires_grad_() for t in (q, k, v)] + ([rpb.requires_grad_()] if rpb is not None else [])
        add('visionattn-triton', lambda: na(q, k, v, kernel, rpb=rpb, backend='triton'), leaves, flops, grad)
    qh, kh, vh = (t.detach().flatten(1, 2).transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    grad_h = grad.flatten(1, 2).transpose(1, 2).contiguous()
    if 'sdpa' in impls:
        sdpa = torch.nn.functional.scaled_dot_product_attention
        add('dense SDPA', lambda: sdpa(qh, kh, vh), [qh, kh, vh], dense_flops, grad_h,
            note='dense over all tokens, no bias; TFLOP/s on dense FLOPs')
    if 'flex' in impls:
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        rpb_f = None if rpb is None else rpb.detach().float().requires_grad_()
        try:
            flex = _flex_fns(height, width, kernel, rpb_f)
            add('FlexAttention (compiled)', lambda: flex(qh, kh, vh), [qh, kh, vh, rpb_f], flops, grad_h)
        except Exception as err:
            rows.append(Row(SUITE, case, 'FlexAttention (compiled)', 'fwd', note=f'{type(err).__name__}: {err}'[:100]))
    return rows


def run(args):
    batch = getattr(args, 'na_batch', 64)
    quick = getattr(args, 'quick', False)
    if getattr(args, 'na_sweep', False):
        return _sweep(batch)
    rows = []
    deadline = getattr(args, 'na_deadline', 0.0)
    start = time.monotonic()

    def out_of_time(case):
        if deadline and time.monotonic() - start > deadline:
            rows.append(Row(SUITE, case, '(all)', 'fwd', note=f'skipped: --na-deadline {deadline:g} s reached'))
            return True
        return False
    stages = NAT_STAGES[:1] + NAT_STAGES[2:3] if quick else NAT_STAGES
    for size, heads in stages:
        for with_rpb in (False, True):
            # SDPA has no bias here (dense over all tokens): timed once per stage; Flex gets the rpb as score_mod.
            impls = ('ours',) if with_rpb and quick else ('ours', 'flex') if with_rpb else ('ours', 'sdpa', 'flex')
            case = f'B{batch} {size}x{size} h{heads} d32 k7' + (' rpb' if with_rpb else '')
            if out_of_time(case):
                continue
            rows += _case_rows(case, batch, size, size, heads, 32, 7, with_rpb, impls)
    if getattr(args, 'na_profile', False):
        na = _import_op()
        for size, heads in (NAT_STAGES[0], NAT_STAGES[2]):
            q, k, v = (torch.randn(batch, size, size, heads, 32, device='cuda', dtype=torch.bfloat16)
                       .requires_grad_() for _ in range(3))
            _profile(na, q, k, v, None, 7, [q, k, v], torch.randn_like(q), f'B{batch} {size}x{size} h{heads} d32 k7')
    large = [(64, 2), (128, 2)] if not quick else [(64, 2)]
    for dim, batch_l in large:
        case = f'B{batch_l} 128x128 h8 d{dim} k13'
        if out_of_time(case):
            continue
        rows += _case_rows(case, batch_l, 128, 128, 8, dim, 13, False, ('ours', 'sdpa', 'flex'))
    return rows



SWEEP_CONFIGS = {
    'A': {'fwd': ((1, 8, 8), (1, 4, 16), 4, 2), 'dkdv': ((1, 8, 8), (1, 8, 8), 4, 2),
          'dq': ((1, 8, 8), (1, 4, 16), 4, 2)},
    'B': {'fwd': ((1, 8, 8), (1, 16, 16), 8, 2), 'dkdv': ((1, 16, 16), (1, 8, 8), 8, 2),
          'dq': ((1, 8, 8), (1, 16, 16), 8, 2)},
    'C': {'fwd': ((1, 8, 8), (1, 8, 8), 4, 3), 'dkdv': ((1, 8, 8), (1, 8, 16), 4, 3),
          'dq': ((1, 8, 8), (1, 8, 8), 4, 3)},
    'D': {'fwd': ((1, 4, 16), (1, 4, 16), 4, 2), 'dkdv': ((1, 4, 16), (1, 4, 16), 4, 2),
          'dq': ((1, 4, 16), (1, 4, 16), 4, 2)},
    'E': {'fwd': ((1, 8, 8), (1, 2, 32), 4, 2), 'dkdv': ((1, 8, 16), (1, 8, 8), 4, 2),
          'dq': ((1, 8, 8), (1, 2, 32), 4, 2)},
    'F': {'fwd': ((1, 16, 8), (1, 4, 32), 8, 2), 'dkdv': ((1, 16, 8), (1, 16, 8), 8, 2),
          'dq': ((1, 16, 8), (1, 4, 32), 8, 2)},
    'G': {'fwd': ((1, 8, 8), (1, 8, 8), 4, 1), 'dkdv': ((1, 4, 16), (1, 8, 8), 4, 1),
          'dq': ((1, 8, 8), (1, 8, 8), 4, 1)},
}


def _sweep(batch):
    """Time each kernel config with CUDA graphs (kernel time, no launch overhead) and with do_bench (wall)."""
    from triton.testing import do_bench_cudagraph

    from visionattn.ops.triton import neighborhood as tri
    na = _import_op()
    cases = [(batch, 56, 2, 32, 7, True), (batch, 14, 8, 32, 7, False), (batch, 7, 16, 32, 7, True),
             (2, 128, 8, 64, 13, False)]
    rows = []
    for b, size, heads, dim, kernel, with_rpb in cases:
        gen = torch.Generator(device='cuda').manual_seed(0)
        q, k, v = (torch.randn(b, size, size, heads, dim, device='cuda', dtype=torch.bfloat16, generator=gen)
                   .requires_grad_() for _ in range(3))
        rpb = (0.02 * torch.randn(heads, 2 * kernel - 1, 2 * kernel - 1, device='cuda')).to(torch.bfloat16) \
            .requires_grad_() if with_rpb else None
        leaves = [t for t in (q, k, v, rpb) if t is not None]
        grad = torch.randn_like(q)
        flops = 4.0 * b * heads * size * size * kernel ** 2 * dim
        case = f'B{b} {size}x{size} h{heads} d{dim} k{kernel}' + (' rpb' if with_rpb else '')
        for name, cfg in SWEEP_CONFIGS.items():
            tri.TILE_OVERRIDE[2] = cfg

            def fwd():
                with torch.no_grad():
                    return na(q, k, v, kernel, rpb=rpb, backend='triton')

            def both():
                return torch.autograd.grad(na(q, k, v, kernel, rpb=rpb, backend='triton'), leaves, grad)
            for mode, fn, factor in (('fwd', fwd, 1.0), ('fwd+bwd', both, 3.5)):
                try:
                    fn()
                    torch.cuda.synchronize()
                    graph_ms = do_bench_cudagraph(fn, rep=30, return_mode='median')
                    row = measure(SUITE, case, f'cfg {name}', mode, fn, flops * factor)
                    row.extra['graph_ms'] = graph_ms
                    row.note = f'graph {graph_ms:.3f} ms = {flops * factor / graph_ms / 1e9:.1f} TF/s'
                except Exception as err:
                    row = Row(SUITE, case, f'cfg {name}', mode, note=f'{type(err).__name__}: {str(err)[:90]}')
                rows.append(row)
                print(row, flush=True)
        tri.TILE_OVERRIDE.clear()
        if size in (56, 14):
            _profile(na, q, k, v, rpb, kernel, leaves, grad, case)
    return rows


def _profile(na, q, k, v, rpb, kernel, leaves, grad, case):
    """Per-kernel CUDA time of one fwd+bwd step with the default configs (printed)."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        return torch.autograd.grad(na(q, k, v, kernel, rpb=rpb, backend='triton'), leaves, grad)
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    print(f'--- profile {case} (10 fwd+bwd steps), by device time')
    print(prof.key_averages().table(sort_by='cuda_time_total', row_limit=12, max_name_column_width=40), flush=True)
    # The host side: where the ~1 ms of host time per backward goes (na_h200.md).
    print(f'--- profile {case} (10 fwd+bwd steps), by host time')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=20, max_name_column_width=60),
          flush=True)
