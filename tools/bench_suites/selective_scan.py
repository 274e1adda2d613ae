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

    from visionattn.ops.triton import selective_scan as kernels
    rows = []
    for name, batch, dim, seq_len, n_state, groups, with_z in (CASES[0], CASES[-1]):
        inputs = _inputs(batch, dim, seq_len, n_state, groups, with_z)
        grad_out = torch.randn(batch, dim, seq_len, device='cuda', dtype=torch.bfloat16)
        flops = 9 * batch * seq_len * dim * n_state

        def forward():
            return selective_scan(*inputs, delta_softplus=True, backend='triton')

        def train_step():
            torch.autograd.grad(forward(), [t for t in inputs if t is not None], grad_out)
        for tile, chunk, warps, min_n in itertools.product((1024, 2048, 4096), (32, 64, 128), (2, 4), (1, 2)):
            if min_n == 1 and n_state > 1:
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


def run(args) -> List[Row]:
    from visionattn.ops import selective_scan
    if args.ss_sweep:
        return _sweep(selective_scan)
    rows = []
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
