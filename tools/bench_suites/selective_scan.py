"""Selective scan: the Triton kernels against the step-by-step PyTorch reference, forward and forward+backward.

Cases are the scans of real models: SS2D in VMamba-T / LaMamba stages (four directions as four B/C groups,
d_state 1), LaMamba-Diff-XL's first stage at 256 px, and a Mamba language-model layer (d_state 16, gate z).
FLOPs are counted as VMamba's ``flops_selective_scan_ref`` counts them (9 * B * L * D * N, plus B * D * L for the
skip D and for the gate z). mamba-ssm's CUDA kernel is not compared: it has no wheel for the GPU machine's torch.

Modes, as a training step pays them: 'fwd' is the forward with autograd on (the inputs require grad, so the op saves
what its backward needs), 'fwd+bwd' adds the backward through ``torch.autograd.grad``; the kernel also gets
'fwd no-grad' (inference, which skips saving the chunk states). Kernel rows have the host time of one call and its
device launches (``common.measure``).
"""
import time
from typing import List

import torch

from bench_suites.common import Row, measure, peak_gib

SUITE = 'selective_scan'

# name, batch, dim (= directions x d_inner), L, d_state, groups, with_z
CASES = [
    ('VMamba-T/LaMamba stage 1 (56x56, 4x192 ch, N=1)', 64, 4 * 192, 56 * 56, 1, 4, False),
    ('VMamba-T/LaMamba stage 3 (14x14, 4x768 ch, N=1)', 64, 4 * 768, 14 * 14, 1, 4, False),
    ('LaMamba-Diff-XL stage 1 (32x32, 4x640 ch, N=1)', 32, 4 * 640, 32 * 32, 1, 4, False),
    ('Mamba LM layer (L=2048, 1536 ch, N=16, z)', 8, 1536, 2048, 16, 1, True),
]


# SS2D's whole scan as LaMamba-Tiny runs it (bf16 map, fp32 output as force_fp32 asks): name, batch, H, W, d_inner
SS2D_CASES = [
    ('SS2D LaMamba-T stage 1 (56x56, 4 orders x 192 ch, N=1)', 64, 56, 56, 192),
    ('SS2D LaMamba-T stage 3 (14x14, 4 orders x 768 ch, N=1)', 64, 14, 14, 768),
]


def add_arguments(parser):
    parser.add_argument('--ss-reference', action='store_true',
                        help='also time the step-by-step reference (seconds per call at these lengths)')
    parser.add_argument('--ss-sweep', action='store_true',
                        help='time tile configurations of the kernels (first and last case) instead of the suite')


def _inputs(batch, dim, seq_len, n_state, groups, with_z, dtype=torch.bfloat16):
    dev = 'cuda'
    u = torch.randn(batch, dim, seq_len, device=dev, dtype=dtype, requires_grad=True)
    delta = (torch.randn(batch, dim, seq_len, device=dev) * 0.5 - 1).to(dtype).requires_grad_()
    A = (-torch.exp(torch.randn(dim, n_state, device=dev) * 0.5)).requires_grad_()
    B = torch.randn(batch, groups, n_state, seq_len, device=dev, dtype=dtype, requires_grad=True)
    C = torch.randn(batch, groups, n_state, seq_len, device=dev, dtype=dtype, requires_grad=True)
    D = torch.randn(dim, device=dev, requires_grad=True)
    z = torch.randn(batch, dim, seq_len, device=dev, dtype=dtype, requires_grad=True) if with_z else None
    bias = torch.randn(dim, device=dev, requires_grad=True)
    return u, delta, A, B, C, D, z, bias


def _measure_slow(case: str, impl: str, mode: str, fn, flops: float) -> Row:
    """One warm-up and the mean of two timed calls: the reference takes seconds per call at these lengths, which
    do_bench's repetitions would multiply."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / 2 * 1e3
    return Row(SUITE, case, impl, mode, ms=ms, tflops=flops / (ms * 1e-3) / 1e12, peak_gib=peak_gib(fn),
               note='mean of 2 calls')


def _sweep(selective_scan) -> List[Row]:
    """Forward and forward+backward time of each tile configuration (TILE_OVERRIDES) at two cases."""
    import itertools

    from visionattn.ops import cross_selective_scan
    from visionattn.ops.triton import selective_scan as kernels
    rows = []
    problems = []
    name, batch, height, width, dim = SS2D_CASES[0]
    ss2d = _ss2d_inputs(batch, height, width, dim)
    problems.append((name + ' fused orders', ss2d, torch.randn(batch, height, width, dim, device='cuda'),
                     lambda inputs: cross_selective_scan(*inputs, True, 'cross', torch.float32), 1,
                     9 * batch * height * width * 4 * dim))
    for name, batch, dim, seq_len, n_state, groups, with_z in (CASES[0], CASES[-1]):
        problems.append((name, _inputs(batch, dim, seq_len, n_state, groups, with_z),
                         torch.randn(batch, dim, seq_len, device='cuda', dtype=torch.bfloat16),
                         lambda inputs: selective_scan(*inputs, delta_softplus=True, backend='triton'), n_state,
                         9 * batch * seq_len * dim * n_state))
    for name, inputs, grad_out, call, n_state, flops in problems:
        def forward(inputs=inputs, call=call):
            return call(inputs)

        def train_step(inputs=inputs, grad_out=grad_out, forward=forward):
            torch.autograd.grad(forward(), [t for t in inputs if t is not None], grad_out)
        for tile, chunk, warps, min_n in itertools.product((1024, 2048, 4096), (32, 64, 128), (2, 4), (1, 2)):
            if (min_n == 1) != (n_state == 1):  # d_state 1 is swept unpadded only (padding lost in the first sweep)
                continue
            kernels.TILE_OVERRIDES.clear()
            kernels.TILE_OVERRIDES.update(tile_elements=tile, chunk=chunk, num_warps=warps, min_block_n=min_n)
            note = f'tile={tile} chunk={chunk} warps={warps} min_block_n={min_n}'
            with torch.no_grad():
                rows.append(measure(SUITE, name, 'sweep', 'fwd', forward, flops, host=False))
            rows.append(measure(SUITE, name, 'sweep', 'fwd+bwd', train_step, 3 * flops, host=False))
            rows[-2].note = rows[-1].note = note
            print(note, f'{rows[-2].ms:.3f} / {rows[-1].ms:.3f} ms', flush=True)
    kernels.TILE_OVERRIDES.clear()
    return rows


def _ss2d_inputs(batch, height, width, dim, n_orders=4):
    """SS2D's scan inputs with d_state 1: the bf16 map, delta, B, C at its positions; fp32 A, D and the bias."""
    dev, bf16 = 'cuda', torch.bfloat16
    seq_len = height * width
    x = torch.randn(batch, height, width, dim, device=dev, dtype=bf16, requires_grad=True)
    delta = (torch.randn(batch, seq_len, n_orders, dim, device=dev) * 0.5 - 4).to(bf16).requires_grad_()
    A = (-torch.rand(n_orders * dim, 1, device=dev)).requires_grad_()
    B = torch.randn(batch, seq_len, n_orders, 1, device=dev, dtype=bf16, requires_grad=True)
    C = torch.randn(batch, seq_len, n_orders, 1, device=dev, dtype=bf16, requires_grad=True)
    D = torch.ones(n_orders * dim, device=dev, requires_grad=True)
    bias = torch.randn(n_orders * dim, device=dev, requires_grad=True)
    return [x, delta, A, B, C, D, bias]


def _ss2d_rows() -> List[Row]:
    """SS2D's scan along four orders: the fused op (each order's steps read from the map, outputs summed once)
    against what SS2D ran before it (issue 27): CrossScan copies, the scan with the orders as groups (inputs cast to
    fp32 as force_fp32 asked), CrossMerge."""
    from visionattn.ops import cross_merge, cross_scan, cross_selective_scan, selective_scan
    rows = []
    for name, batch, height, width, dim in SS2D_CASES:
        seq_len, n_orders = height * width, 4
        leaves = _ss2d_inputs(batch, height, width, dim)
        x, delta, A, B, C, D, bias = leaves
        grad_out = torch.randn(batch, height, width, dim, device='cuda')

        def fused():
            return cross_selective_scan(x, delta, A, B, C, D, bias, True, 'cross', torch.float32)

        def copies():  # the orders made explicit as SS2D did it before (delta, B and C taken in order 0's steps)
            xs = cross_scan(x.permute(0, 3, 1, 2)).reshape(batch, n_orders * dim, seq_len)
            dts = delta.permute(0, 2, 3, 1).reshape(batch, n_orders * dim, seq_len)
            ys = selective_scan(xs.float(), dts, A, B.permute(0, 2, 3, 1).float().contiguous(),
                                C.permute(0, 2, 3, 1).float().contiguous(), D, delta_bias=bias, delta_softplus=True)
            return cross_merge(ys.view(batch, n_orders, dim, seq_len), height, width).transpose(1, 2).reshape(
                batch, height, width, dim)
        flops = 9 * batch * seq_len * n_orders * dim + batch * n_orders * dim * seq_len
        # read the map once (bf16), delta (bf16), B and C; write the merged output once (fp32)
        min_bytes = batch * seq_len * (dim * 2 + n_orders * dim * 2 + 2 * n_orders * 2 + dim * 4)
        for impl, forward in (('fused orders', fused), ('copies + scan + merge', copies)):
            def infer(forward=forward):
                with torch.no_grad():
                    return forward()

            def train_step(forward=forward):
                torch.autograd.grad(forward(), leaves, grad_out)
            for mode, step, mode_flops, mode_bytes in (('fwd no-grad', infer, flops, min_bytes),
                                                       ('fwd', forward, flops, min_bytes),
                                                       ('fwd+bwd', train_step, 3 * flops, 3 * min_bytes)):
                rows.append(measure(SUITE, name, impl, mode, step, mode_flops, mode_bytes))
                print(rows[-1], flush=True)
    return rows


def run(args) -> List[Row]:
    from visionattn.ops import selective_scan
    if args.ss_sweep:
        return _sweep(selective_scan)
    rows = _ss2d_rows()
    impls = ['triton'] + (['reference'] if args.ss_reference else [])
    for name, batch, dim, seq_len, n_state, groups, with_z in CASES:
        inputs = _inputs(batch, dim, seq_len, n_state, groups, with_z)
        flops = 9 * batch * seq_len * dim * n_state + batch * dim * seq_len * (2 if with_z else 1)
        elem = 2  # bf16 activations
        act_bytes = batch * dim * seq_len * elem * (4 if with_z else 3)  # u, delta, (z), y
        min_bytes = act_bytes + 2 * batch * groups * n_state * seq_len * elem
        grad_out = torch.randn(batch, dim, seq_len, device='cuda', dtype=torch.bfloat16)
        leaves = [t for t in inputs if t is not None]
        for impl in impls:
            def forward(impl=impl):
                return selective_scan(*inputs, delta_softplus=True, backend=impl)

            def infer(impl=impl):
                with torch.no_grad():
                    return forward(impl)

            def train_step(impl=impl):
                torch.autograd.grad(forward(impl), leaves, grad_out)
            # backward reads the forward's inputs again, dy, and writes every input's gradient
            modes = [('fwd', forward, flops, min_bytes), ('fwd+bwd', train_step, 3 * flops, 3 * min_bytes)]
            if impl == 'triton':
                modes.insert(0, ('fwd no-grad', infer, flops, min_bytes))
            for mode, step, mode_flops, mode_bytes in modes:
                if impl == 'triton':
                    rows.append(measure(SUITE, name, impl, mode, step, mode_flops, mode_bytes))
                else:
                    rows.append(_measure_slow(name, impl, mode, step, mode_flops))
                print(rows[-1], flush=True)
    return rows
