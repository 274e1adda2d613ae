"""LayerNorm at the backbones' NHWC shapes on a CUDA GPU: visionattn's op against PyTorch's, in the same run.

    python tools/layer_norm_bench.py [--batch 64]

Float32 inputs (the residual stream under autocast), forward under no_grad and forward+backward with autograd
(triton's do_bench; host path included). The shapes are NAT/BiFormer's stage widths and Swin-T's first and third.
"ours" names the Triton backend, since the automatic choice takes it only for large no-grad calls.
"""
import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visionattn.ops import layer_norm  # noqa: E402

SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512), (56, 96), (14, 384)]  # (map side, channels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error('needs a CUDA GPU')
    print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)
    for side, n in SHAPES:
        shape = (args.batch, side, side, n)
        x = torch.randn(shape, device='cuda', requires_grad=True)
        weight = torch.randn(n, device='cuda', requires_grad=True)
        bias = torch.randn(n, device='cuda', requires_grad=True)
        dy = torch.randn(shape, device='cuda')
        row = []
        for name, fn in (('torch', lambda: F.layer_norm(x, (n,), weight, bias, 1e-6)),
                         ('ours', lambda: layer_norm(x, n, weight, bias, 1e-6, backend='triton'))):
            with torch.no_grad():
                fwd = triton.testing.do_bench(fn, warmup=20, rep=100)
            both = triton.testing.do_bench(lambda: torch.autograd.grad(fn(), (x, weight, bias), dy), warmup=20,
                                           rep=100)
            row.append(f'{name} fwd {fwd * 1e3:.0f} us, fwd+bwd {both * 1e3:.0f} us')
        print(f'{shape} fp32 ({x.numel() * 8 / 1e6:.0f} MB read+written by a forward): ' + '; '.join(row),
              flush=True)


if __name__ == '__main__':
    main()
