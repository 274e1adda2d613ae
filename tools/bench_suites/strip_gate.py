"""ELA's strip gate at ELA-ResNet50's stage shapes: the Triton path against the PyTorch reference (eager and
``torch.compile``) and against the layer it competes with, ECA (timm's ``EcaModule``: a global mean, a 1-D conv
and a sigmoid gate), under bf16 autocast on channels-last maps, as the models run; batch 128 (the benchmark's
training batch).

Modes: 'fwd no-grad' (inference), 'fwd+bwd' (a training step's share: the map and the layer's parameters require
grad, backward through ``torch.autograd.grad``). bw floor: the map read once and the output written once (forward),
plus the output gradient read and the input gradient written once more, and the map read again (forward+backward),
at 4.3 TB/s, as a share of the measured time.
"""
import sys
from pathlib import Path
from typing import List

import torch

from .common import Row, measure

SUITE = 'strip_gate'
DEVICE = 'cuda'
# ELA-ResNet50's four stages at 224 px: (channels, side)
STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))


def add_arguments(parser):
    parser.add_argument('--strip-batch', type=int, default=128, help='strip_gate suite: batch size')


def _modules(channels: int):
    root = Path(__file__).resolve().parents[2]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from timm.layers import EcaModule

    from visionattn.layers import EfficientLocalAttention
    from visionattn.ops import strip_gate
    from visionattn.ops.reference import strip_gate_ref
    ela = EfficientLocalAttention(channels).to(DEVICE)
    params = tuple(ela.parameters())
    compiled_ref = torch.compile(strip_gate_ref)
    return {
        'triton': lambda x: strip_gate(x, ela._gate, params, backend='triton'),
        'reference': lambda x: strip_gate_ref(x, ela._gate),
        'reference compiled': lambda x: compiled_ref(x, ela._gate),
        'ECA (timm)': EcaModule(channels).to(DEVICE),
    }, params


def run(args) -> List[Row]:
    batch = args.strip_batch
    rows = []
    for channels, side in STAGES[:2] if getattr(args, 'quick', False) else STAGES:
        x = torch.randn(batch, channels, side, side, device=DEVICE, dtype=torch.bfloat16)
        x = x.to(memory_format=torch.channels_last).requires_grad_()
        grad_out = torch.randn_like(x)
        nbytes = x.numel() * x.element_size()
        case = f'ELA-ResNet50 {channels}x{side}², B={batch}, bf16 autocast, channels-last'
        modules, ela_params = _modules(channels)
        for impl, fn in modules.items():
            params = list(fn.parameters()) if isinstance(fn, torch.nn.Module) else list(ela_params)

            def infer(fn=fn):
                with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
                    return fn(x)

            def train_step(fn=fn, params=params):
                with torch.autocast(DEVICE, dtype=torch.bfloat16):
                    out = fn(x)
                torch.autograd.grad(out, [x, *params], grad_out)
            for mode, step, floor in (('fwd no-grad', infer, 2 * nbytes), ('fwd+bwd', train_step, 5 * nbytes)):
                try:
                    row = measure(SUITE, case, impl, mode, step, 0.0, floor)
                except RuntimeError as error:  # e.g. a compile failure: a row, and the run goes on
                    row = Row(SUITE, case, impl, mode, note=f'failed: {str(error).splitlines()[0][:80]}')
                rows.append(row)
                print(row, flush=True)
    return rows
