"""Device time of BiFormer's BRA backward, with and without the LCE conv's weight/bias gradient, on a CUDA GPU.

    python tools/bra_diagnose.py [--batch 64] [--compare-module visionattn.ops.triton._old_block_sparse]

At BiFormer-S's three BRA stage shapes (224² input, 7x7 regions, bf16, a 5x5 LCE conv) it times the backward kernels
of one call (triton's do_bench, no autograd: the plan's own backward), once with the LCE gradient kernel and once
without; the difference is that kernel's cost. ``--compare-module`` names another copy of
``visionattn/ops/triton/block_sparse.py`` (say a previous commit's, saved under that name) to time beside it on the
same inputs, and prints how far its gradients are from this module's.
"""
import argparse
import importlib
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visionattn.ops.triton import block_sparse  # noqa: E402

# (map side, channels, heads, topk): BiFormer-S's BRA stages at 224 (Zhu et al., CVPR 2023, Table 1)
STAGES = [(56, 64, 2, 1), (28, 128, 4, 4), (14, 256, 8, 16)]


def backward_times(module, qkv, weight, bias, dout, heads, topk, channels):
    """(ms with the LCE gradient, ms without it, the gradients) of one BRA call's backward."""
    module._PLANS.clear()
    scale = channels ** -0.5
    plan = module._bra_plan(qkv, None, None, weight, bias, 7, heads, topk, channels)
    out, o, lse, ibuf = module._bra_forward(plan, qkv, None, None, weight, bias, scale, True)
    saved = out if o is None else o

    def backward(lepe_grad):
        return module._bra_backward(plan, dout, qkv, None, None, weight, saved, lse, ibuf, scale, lepe_grad)

    with_lepe = triton.testing.do_bench(lambda: backward(True), warmup=25, rep=200)
    without = triton.testing.do_bench(lambda: backward(False), warmup=25, rep=200)
    return with_lepe, without, backward(True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--compare-module', default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error('needs a CUDA GPU')
    other = importlib.import_module(args.compare_module) if args.compare_module else None
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    for side, channels, heads, topk in STAGES:
        gen = torch.Generator(device='cuda').manual_seed(0)
        qkv = torch.randn(args.batch, side, side, 3 * channels, device='cuda', dtype=torch.bfloat16, generator=gen)
        weight = torch.randn(channels, 1, 5, 5, device='cuda', generator=gen)
        bias = torch.randn(channels, device='cuda', generator=gen)
        dout = torch.randn(args.batch, side, side, channels, device='cuda', dtype=torch.bfloat16, generator=gen)
        line = f'B{args.batch} {side}x{side} c{channels}: backward ms with / without the LCE gradient: '
        ours = backward_times(block_sparse, qkv, weight, bias, dout, heads, topk, channels)
        line += f'{ours[0]:.3f} / {ours[1]:.3f} (LCE {ours[0] - ours[1]:.3f})'
        if other is not None:
            theirs = backward_times(other, qkv, weight, bias, dout, heads, topk, channels)
            diffs = [((a - b).norm() / b.norm()).item() for a, b in zip(theirs[2][3:], ours[2][3:])]
            line += (f'; {args.compare_module}: {theirs[0]:.3f} / {theirs[1]:.3f} (LCE {theirs[0] - theirs[1]:.3f}),'
                     f' its dweight / dbias from ours: {diffs[0]:.1e} / {diffs[1]:.1e}')
        print(line, flush=True)


if __name__ == '__main__':
    main()
