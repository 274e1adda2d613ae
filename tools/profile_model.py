"""Where one step of a model spends its time: device time by kernel, launches, host time by op (torch.profiler).

    python tools/profile_model.py nat_tiny swin_tiny_patch4_window7_224 --bench train --batch-size 64 \\
        --amp --channels-last [--trace DIR]

The step is the one tools/benchmark.py times (``infer``, ``train`` with AdamW, ``infer-bs8``, ``compile-infer``,
``compile-train``), built by the same code; a compiled step is compiled and warmed before the profile. Per model it
prints the wall time of a step (synchronised), the device time of its kernels, the kernels launched per step, the
kernels that take the most device time and the operators that take the most host time of their own. ``--trace DIR``
also writes a Chrome trace per model. Profile before optimising (issue 20).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/benchmark.py

from benchmark import OPTIMIZERS, _at_least, _Setup, _synchronize, parse_benches  # noqa: E402

import visionattn  # noqa: E402,F401  (registers the zoo with timm)


def _is_annotation(event) -> bool:
    return bool(getattr(event, 'is_user_annotation', False)) or event.key.startswith(('Optimizer.', 'ProfilerStep'))


def device_kernels(events) -> list:
    """The device events of kernels (and copies) in ``key_averages()``. Not user annotations: an annotation's device
    side (the optimizer's 'Optimizer.step#AdamW.step') is a range over the kernels it launched and the idle gaps
    between them, and was counted again on top of them (13.7 ms of biformer_s's 101 ms per step, thirteenth session).
    """
    return [e for e in events if getattr(e, 'device_type', None) == torch.autograd.DeviceType.CUDA
            and e.self_device_time_total > 0 and not _is_annotation(e)]


def profile_step(name, args, device):
    from torch.profiler import ProfilerActivity, profile
    setup = _Setup(name, args, device)
    cfg = setup.model.pretrained_cfg
    size = args.img_size or cfg.get('input_size', (3, 224, 224))[-1]
    setup.input_size = (3, size, size)
    bench = args.bench
    x, target = setup.inputs(setup.batch_of(bench))
    step = setup.step(bench, setup.runner(bench), x, target)
    for _ in range(max(args.warmup, 2 if bench.startswith('compile-') else 0)):  # a compiled step: compile, then warm
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    _synchronize(device)
    wall = (time.perf_counter() - start) / args.steps * 1e3
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    host = (time.perf_counter() - start) / args.steps * 1e3  # enqueue time while the device may lag behind
    _synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        _synchronize(device)
    if args.trace:
        args.trace.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(args.trace / f'{name}_{bench}.json'))
    events = prof.key_averages()
    kernels = device_kernels(events)
    device_ms = sum(e.self_device_time_total for e in kernels) / args.steps / 1e3
    launches = sum(e.count for e in kernels) / args.steps
    print(f'## {name} {bench} batch {setup.batch_of(bench)}: wall {wall:.2f} ms/step, host enqueue {host:.2f} ms, '
          f'device {device_ms:.2f} ms, {launches:.0f} kernels/step', flush=True)
    print('top kernels (ms/step, launches/step):')
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:args.top]:
        print(f'  {e.self_device_time_total / args.steps / 1e3:7.3f} {e.count / args.steps:6.0f}  {e.key[:110]}')
    cpu_ops = [e for e in events if e.self_cpu_time_total > 0 and not e.key.startswith('ProfilerStep')]
    print('top host ops by own CPU time (ms/step, calls/step):')
    for e in sorted(cpu_ops, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f'  {e.self_cpu_time_total / args.steps / 1e3:7.3f} {e.count / args.steps:6.0f}  {e.key[:110]}')
    print(flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('models', nargs='+')
    parser.add_argument('--bench', default='train',
                        help='one of tools/benchmark.py\'s benchmarks (infer, train, infer-bsN, compile-infer, '
                             'compile-train: the first calls compile, the profile sees the compiled steps)')
    parser.add_argument('--batch-size', type=_at_least(1), default=64)
    parser.add_argument('--train-batch-size', type=_at_least(1))
    parser.add_argument('--img-size', type=_at_least(1))  # 0 fell back to the model's own size without a word
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', choices=('bf16', 'fp16'), default='bf16')
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--warmup', type=_at_least(0), default=5)
    parser.add_argument('--steps', type=_at_least(1), default=5)  # 0 divided by zero after the warm-up
    parser.add_argument('--top', type=int, default=20)
    parser.add_argument('--trace', type=Path, help='folder for Chrome traces')
    parser.add_argument('--fullgraph', action='store_true', help='compiled benchmarks: torch.compile(fullgraph=True)')
    parser.add_argument('--compile-mode', default='default', help='compiled benchmarks: torch.compile mode')
    parser.add_argument('--compile-backend', default='inductor', help='compiled benchmarks: torch.compile backend')
    parser.add_argument('--optimizer', choices=OPTIMIZERS, default='adamw',
                        help="training: torch's default AdamW or AdamW(fused=True), as tools/benchmark.py")
    args = parser.parse_args(argv)
    benches = parse_benches(args.bench)
    if len(benches) != 1:
        parser.error('--bench takes one benchmark (infer, train, infer-bsN, compile-infer or compile-train)')
    args.bench = benches[0]
    device = torch.device(args.device)
    for name in args.models:
        profile_step(name, args, device)


if __name__ == '__main__':
    main()
