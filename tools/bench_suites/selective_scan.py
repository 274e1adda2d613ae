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


# SS2D's whole scan as LaMamba-Tiny runs it (bf16 map, fp32 output as force_fp32 asks, ssm_ratio 1, d_state 1,
# dt_rank ceil(dim / 16)): name, batch, H, W, d_inner. (The seventh session's table used d_inner 192 / 768 at
# stages 1 / 3, VMamba's ssm_ratio 2.)
SS2D_CASES = [
    ('SS2D LaMamba-T stage 1 (56x56, 4 orders x 96 ch, N=1)', 64, 56, 56, 96),
    ('SS2D LaMamba-T stage 2 (28x28, 4 orders x 192 ch, N=1)', 64, 28, 28, 192),
    ('SS2D LaMamba-T stage 3 (14x14, 4 orders x 384 ch, N=1)', 64, 14, 14, 384),
    ('SS2D LaMamba-T stage 4 (7x7, 4 orders x 768 ch, N=1)', 64, 7, 7, 768),
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
    """Time of each tile configuration: the merged SS2D inference kernels (``cross_scan.TILE_OVERRIDES``) at LaMamba-T's
    stages 1 and 3, then the order-by-order kernels (``selective_scan.TILE_OVERRIDES``) forward and forward+backward
    with autograd at SS2D's stage 1 and two plain cases."""
    import itertools

    from visionattn.ops import cross_selective_scan
    from visionattn.ops.triton import cross_scan
    from visionattn.ops.triton import selective_scan as kernels
    enabled, cross_scan.ENABLED = cross_scan.ENABLED, True
    rows = []
    for name, batch, height, width, dim in (SS2D_CASES[0], SS2D_CASES[2]):
        x, low, A, B, C, D, bias, proj = _ss2d_inputs(batch, height, width, dim)
        flops = 9 * batch * height * width * 4 * dim

        def infer(x=x, low=low, A=A, B=B, C=C, D=D, bias=bias, proj=proj):
            with torch.no_grad():
                return cross_selective_scan(x, low, A, B, C, D, bias, True, 'cross', torch.float32, delta_proj=proj)
        leaves = (x, low, A, B, C, D, bias, proj)
        grad_out = torch.randn(x.shape, device='cuda')

        def train_step(leaves=leaves, grad_out=grad_out):
            torch.autograd.grad(cross_selective_scan(*leaves[:7], True, 'cross', torch.float32,
                                                     delta_proj=leaves[7]), leaves, grad_out)
        # 2048 elements on 4 warps (the default) spill at 255 registers (ptxas, sm_90); 4-8 elements a thread do not
        settings = [dict(tile_elements=t, num_warps=w) for t, w in itertools.product((256, 512, 1024, 2048), (2, 4, 8))]
        settings += [dict(boundary_chunk=c, boundary_channels=ch, boundary_warps=w)
                     for c, ch, w in itertools.product((32, 64), (16, 32), (2, 4))]
        for setting in settings:
            cross_scan.TILE_OVERRIDES.clear()
            cross_scan.TILE_OVERRIDES.update(setting)
            note = ' '.join(f'{k}={v}' for k, v in setting.items())
            rows.append(measure(SUITE, name + ' merged', 'sweep', 'fwd no-grad', infer, flops, host=False))
            rows.append(measure(SUITE, name + ' merged', 'sweep', 'fwd+bwd', train_step, 3 * flops, host=False))
            rows[-2].note = rows[-1].note = note
            print(name, note, f'{rows[-2].ms:.3f} / {rows[-1].ms:.3f} ms', flush=True)
        cross_scan.TILE_OVERRIDES.clear()
    problems = []
    name, batch, height, width, dim = SS2D_CASES[0]
    ss2d = _ss2d_inputs(batch, height, width, dim)
    problems.append((name + ' order by order', ss2d, torch.randn(batch, height, width, dim, device='cuda'),
                     lambda inputs: cross_selective_scan(*inputs[:7], True, 'cross', torch.float32,
                                                         delta_proj=inputs[7]), 1,
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
        cross_scan.ENABLED = False  # the order-by-order kernels' tiles
        for tile, chunk, warps, min_n in itertools.product((1024, 2048, 4096), (32, 64, 128), (2, 4), (1, 2)):
            if (min_n == 1) != (n_state == 1):  # d_state 1 is swept unpadded only (padding lost in the first sweep)
                continue
            kernels.TILE_OVERRIDES.clear()
            kernels.TILE_OVERRIDES.update(tile_elements=tile, chunk=chunk, num_warps=warps, min_block_n=min_n)
            note = f'tile={tile} chunk={chunk} warps={warps} min_block_n={min_n}'
            rows.append(measure(SUITE, name, 'sweep', 'fwd', forward, flops, host=False))  # with autograd
            rows.append(measure(SUITE, name, 'sweep', 'fwd+bwd', train_step, 3 * flops, host=False))
            rows[-2].note = rows[-1].note = note
            print(note, f'{rows[-2].ms:.3f} / {rows[-1].ms:.3f} ms', flush=True)
    kernels.TILE_OVERRIDES.clear()
    cross_scan.ENABLED = enabled
    return rows


def _ss2d_inputs(batch, height, width, dim, n_orders=4):
    """SS2D's scan inputs with d_state 1: the bf16 map, the step sizes' rank-R projections and B, C as strided
    slices of one projection [batch, L, 4, R + 2] (as SS2D's x_proj makes them), dt_proj [4, dim, R]; fp32 A, D
    and the bias."""
    dev, bf16 = 'cuda', torch.bfloat16
    seq_len, rank = height * width, -(-dim // 16)
    x = torch.randn(batch, height, width, dim, device=dev, dtype=bf16, requires_grad=True)
    x_dbl = (torch.randn(batch, seq_len, n_orders, rank + 2, device=dev) * 0.5).to(bf16)
    low, B, C = (t.detach().requires_grad_() for t in x_dbl.split([rank, 1, 1], dim=3))
    proj = (torch.randn(n_orders, dim, rank, device=dev) * rank ** -0.5).requires_grad_()
    A = (-torch.rand(n_orders * dim, 1, device=dev)).requires_grad_()
    D = torch.ones(n_orders * dim, device=dev, requires_grad=True)
    bias = (torch.randn(n_orders * dim, device=dev) - 4).requires_grad_()
    return [x, low, A, B, C, D, bias, proj]


def _ss2d_rows() -> List[Row]:
    """SS2D's scan along four orders, as LaMamba-T runs it. Inference ('fwd no-grad'): the merged kernels
    (``triton/cross_scan.py``: boundary states, then tiles that sum the orders on chip), with the step projection
    on chip ('merged, low-rank steps') or read as [B, L, 4, dim] ('merged'), against the order-by-order kernels
    (each order's output written, then summed). Training ('fwd', 'fwd+bwd' with autograd): the merged kernels and
    their backward, against what SS2D ran before them (the projection einsum, then the order-by-order kernels). The
    bandwidth floor counts the map, the full step sizes, B and C read once and the merged fp32 output written
    once (three times that for forward+backward)."""
    from visionattn.ops import cross_selective_scan, scan_orders
    from visionattn.ops.reference.selective_scan import project_steps
    from visionattn.ops.triton import cross_scan
    from visionattn.ops.triton import selective_scan as kernels
    enabled, cross_scan.ENABLED = cross_scan.ENABLED, True  # opt-in until timed: this suite times them
    rows = []
    for name, batch, height, width, dim in SS2D_CASES:
        seq_len, n_orders = height * width, 4
        leaves = _ss2d_inputs(batch, height, width, dim)
        x, low, A, B, C, D, bias, proj = leaves
        with torch.no_grad():
            delta = project_steps(low, proj).to(torch.bfloat16)
        order = scan_orders(height, width, 'cross', 'cuda')
        grad_out = torch.randn(batch, height, width, dim, device='cuda')

        def low_rank():
            return cross_selective_scan(x, low, A, B, C, D, bias, True, 'cross', torch.float32, delta_proj=proj)

        def merged():
            return cross_selective_scan(x, delta, A, B, C, D, bias, True, 'cross', torch.float32)

        def order_by_order():
            return kernels._cross_fwd(x, delta, A, B, C, D, bias, order, True, torch.float32, False)[0]

        def train_step():
            torch.autograd.grad(low_rank(), leaves, grad_out)

        def einsum_order_by_order():  # the training path before the merged backward: SS2D's einsum, then the kernels
            return kernels._CrossScanFn.apply(x, project_steps(low, proj), A, B, C, D, bias, order, True,
                                              torch.float32)

        def einsum_train_step():
            torch.autograd.grad(einsum_order_by_order(), leaves, grad_out)
        flops = 9 * batch * seq_len * n_orders * dim + batch * n_orders * dim * seq_len
        # read the map once (bf16), delta (bf16), B and C; write the merged output once (fp32)
        min_bytes = batch * seq_len * (dim * 2 + n_orders * dim * 2 + 2 * n_orders * 2 + dim * 4)
        steps = [('merged, low-rank steps', 'fwd no-grad', low_rank, flops, min_bytes),
                 ('merged', 'fwd no-grad', merged, flops, min_bytes),
                 ('order by order', 'fwd no-grad', order_by_order, flops, min_bytes),
                 ('merged, low-rank steps', 'fwd', low_rank, flops, min_bytes),
                 ('merged, low-rank steps', 'fwd+bwd', train_step, 3 * flops, 3 * min_bytes),
                 ('einsum + order by order', 'fwd', einsum_order_by_order, flops, min_bytes),
                 ('einsum + order by order', 'fwd+bwd', einsum_train_step, 3 * flops, 3 * min_bytes)]
        with torch.no_grad():
            got, expected = low_rank(), order_by_order()
        print(f'{name}: merged vs order by order, max |diff| {(got - expected).abs().max().item():.3e} '
              f'(max |y| {expected.abs().max().item():.3e})', flush=True)
        for impl, mode, step, mode_flops, mode_bytes in steps:
            def run_step(step=step, mode=mode):
                if mode == 'fwd no-grad':
                    with torch.no_grad():
                        return step()
                return step()
            rows.append(measure(SUITE, name, impl, mode, run_step, mode_flops, mode_bytes))
            print(rows[-1], flush=True)
    cross_scan.ENABLED = enabled
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
